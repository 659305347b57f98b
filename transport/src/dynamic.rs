//! Dynamic calls: any method of any service, by name, with messages built at run time from
//! descriptors instead of generated code (what `grpcurl` does).
//!
//! The descriptors come from a server's reflection service ([`DynamicClient::from_reflection`])
//! or from a descriptor set the program already has ([`DynamicClient::new`]). Messages are
//! `prost-reflect` [`DynamicMessage`]s, built field by field or parsed from protobuf JSON:
//!
//! ```no_run
//! # async fn run(channel: anygrpc::Channel) -> Result<(), anygrpc::Status> {
//! use anygrpc::{dynamic::DynamicClient, Request};
//!
//! let client = DynamicClient::from_reflection(channel).await?;
//! let method = client.method("helloworld.Greeter/SayHello")?;
//! let request = DynamicClient::from_json(method.input(), r#"{"name": "world"}"#)?;
//! let reply = client.unary(&method, Request::new(request)).await?;
//! println!("{}", DynamicClient::to_json(reply.get_ref())?);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use prost::Message;
/// The `prost-reflect` crate anygrpc's dynamic calls are built on, for its descriptor and
/// message types.
pub use prost_reflect;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage,
};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::{
    client::Grpc,
    codegen::PathAndQuery,
    reflection::{
        MessageRequest, MessageResponse, ServerReflectionRequest, ServerReflectionResponse,
    },
    Channel, Code, Codec, IntoRequest, IntoStreamingRequest, ProstCodec, Request, Response, Status,
    Streaming,
};

/// The most files [`DynamicClient::from_reflection`] takes from a server, so a server that
/// keeps naming new imports cannot grow the client's memory without bound.
pub const MAX_REFLECTED_FILES: usize = 4096;

/// Encodes [`DynamicMessage`]s of one type and decodes another, for one method.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    request: MessageDescriptor,
    response: MessageDescriptor,
}

impl DynamicCodec {
    /// The codec of `method`: its input type out, its output type in.
    pub fn new(method: &MethodDescriptor) -> DynamicCodec {
        DynamicCodec {
            request: method.input(),
            response: method.output(),
        }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;

    /// A message of another type than the method's input (by full name) is
    /// `INVALID_ARGUMENT`.
    fn encode(&self, item: DynamicMessage, dst: &mut BytesMut) -> Result<(), Status> {
        if item.descriptor().full_name() != self.request.full_name() {
            return Err(Status::invalid_argument(format!(
                "the method takes {}, not {}",
                self.request.full_name(),
                item.descriptor().full_name()
            )));
        }
        item.encode(dst)
            .map_err(|e| Status::internal(format!("failed to encode message: {e}")))
    }

    fn encoded_len(&self, item: &DynamicMessage) -> usize {
        item.encoded_len()
    }

    fn decode(&self, src: Bytes) -> Result<DynamicMessage, Status> {
        DynamicMessage::decode(self.response.clone(), src)
            .map_err(|e| Status::internal(format!("failed to decode message: {e}")))
    }
}

/// A client for any method its descriptor pool describes.
#[derive(Debug, Clone)]
pub struct DynamicClient {
    grpc: Grpc,
    pool: DescriptorPool,
}

impl DynamicClient {
    /// A client calling the methods of `pool` on `channel`.
    pub fn new(channel: Channel, pool: DescriptorPool) -> DynamicClient {
        DynamicClient {
            grpc: Grpc::new(channel),
            pool,
        }
    }

    /// A client for every service the server on `channel` lists through reflection
    /// (`grpc.reflection.v1`, or `v1alpha` if the server has only that), with the files that
    /// define them and their imports.
    pub async fn from_reflection(channel: Channel) -> Result<DynamicClient, Status> {
        let files = match reflect(&channel, "grpc.reflection.v1.ServerReflection").await {
            Err(status) if status.code() == Code::Unimplemented => {
                reflect(&channel, "grpc.reflection.v1alpha.ServerReflection").await?
            }
            files => files?,
        };
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet {
            file: in_import_order(files)?,
        })
        .map_err(|e| Status::internal(format!("the reflected descriptors are invalid: {e}")))?;
        Ok(DynamicClient::new(channel, pool))
    }

    /// The descriptors the client knows.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The method named `package.Service/Method` (a leading `/`, or a `.` before the method,
    /// is accepted too); `NOT_FOUND` if the pool has no such method.
    pub fn method(&self, name: &str) -> Result<MethodDescriptor, Status> {
        let name = name.strip_prefix('/').unwrap_or(name);
        let (service, method) = name
            .rsplit_once('/')
            .or_else(|| name.rsplit_once('.'))
            .ok_or_else(|| Status::invalid_argument(format!("{name:?} names no method")))?;
        self.pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .ok_or_else(|| Status::not_found(format!("no method {service}/{method}")))
    }

    /// Parses protobuf JSON into a message of type `descriptor`; bad JSON, or JSON that does
    /// not fit the type, is `INVALID_ARGUMENT`.
    pub fn from_json(descriptor: MessageDescriptor, json: &str) -> Result<DynamicMessage, Status> {
        let mut parser = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(descriptor, &mut parser)
            .and_then(|message| parser.end().map(|()| message))
            .map_err(|e| Status::invalid_argument(format!("bad JSON message: {e}")))
    }

    /// The protobuf JSON of a message; `INTERNAL` if it has none (a `google.protobuf.Any` of
    /// a type the pool does not know).
    pub fn to_json(message: &DynamicMessage) -> Result<String, Status> {
        serde_json::to_string(message)
            .map_err(|e| Status::internal(format!("the message has no JSON form: {e}")))
    }

    /// A unary call to `method`.
    pub async fn unary(
        &self,
        method: &MethodDescriptor,
        request: impl IntoRequest<DynamicMessage>,
    ) -> Result<Response<DynamicMessage>, Status> {
        let codec = DynamicCodec::new(method);
        self.grpc
            .unary(path(method)?, codec, request.into_request())
            .await
    }

    /// A server-streaming call to `method`.
    pub async fn server_streaming(
        &self,
        method: &MethodDescriptor,
        request: impl IntoRequest<DynamicMessage>,
    ) -> Result<Response<Streaming<DynamicMessage>>, Status> {
        let codec = DynamicCodec::new(method);
        self.grpc
            .server_streaming(path(method)?, codec, request.into_request())
            .await
    }

    /// A client-streaming call to `method`.
    pub async fn client_streaming<S>(
        &self,
        method: &MethodDescriptor,
        requests: impl IntoStreamingRequest<Stream = S, Message = DynamicMessage>,
    ) -> Result<Response<DynamicMessage>, Status>
    where
        S: Stream<Item = DynamicMessage> + Send + 'static,
    {
        let codec = DynamicCodec::new(method);
        self.grpc
            .client_streaming(path(method)?, codec, requests.into_streaming_request())
            .await
    }

    /// A bidirectional-streaming call to `method`.
    pub async fn streaming<S>(
        &self,
        method: &MethodDescriptor,
        requests: impl IntoStreamingRequest<Stream = S, Message = DynamicMessage>,
    ) -> Result<Response<Streaming<DynamicMessage>>, Status>
    where
        S: Stream<Item = DynamicMessage> + Send + 'static,
    {
        let codec = DynamicCodec::new(method);
        self.grpc
            .streaming(path(method)?, codec, requests.into_streaming_request())
            .await
    }
}

/// The path of `method`: `/package.Service/Method`.
fn path(method: &MethodDescriptor) -> Result<PathAndQuery, Status> {
    path_of(method.parent_service().full_name(), method.name())
}

/// `/{service}/{method}`; `INVALID_ARGUMENT` if that is no valid path.
fn path_of(service: &str, method: &str) -> Result<PathAndQuery, Status> {
    format!("/{service}/{method}")
        .parse()
        .map_err(|_| Status::invalid_argument(format!("/{service}/{method} is no valid path")))
}

/// Every file the reflection service `service` (`grpc.reflection.v1.ServerReflection` or its
/// `v1alpha` twin) has for the services it lists, and the files they import.
async fn reflect(channel: &Channel, service: &str) -> Result<Vec<FileDescriptorProto>, Status> {
    let (questions, asked) = futures_channel::mpsc::unbounded();
    let path = path_of(service, "ServerReflectionInfo")?;
    let codec = ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::new();
    let answers = Grpc::new(channel.clone())
        .streaming(path, codec, Request::new(asked))
        .await?
        .into_inner();
    let mut reflection = Reflection { questions, answers };
    let services = match reflection
        .ask(MessageRequest::ListServices(String::new()))
        .await?
    {
        MessageResponse::ListServicesResponse(list) => list.service,
        _ => {
            return Err(Status::internal(
                "reflection answered ListServices with another answer",
            ))
        }
    };
    let mut files = HashMap::new();
    for service in services {
        // A listed service the server cannot describe is left out: it cannot be called.
        match reflection
            .ask(MessageRequest::FileContainingSymbol(service.name))
            .await
        {
            Err(status) if status.code() == Code::NotFound => continue,
            answer => add_files(answer?, &mut files)?,
        }
    }
    // A server may leave out imports it sent before, or send only the file asked for.
    let mut asked = HashSet::new();
    loop {
        let missing: HashSet<String> = files
            .values()
            .flat_map(|f| f.dependency.iter())
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        if missing.is_empty() {
            reflection.finish().await?;
            return Ok(files.into_values().collect());
        }
        for name in missing {
            if !asked.insert(name.clone()) {
                return Err(Status::not_found(format!(
                    "reflection did not send {name}, which its files import"
                )));
            }
            let answer = reflection.ask(MessageRequest::FileByFilename(name));
            add_files(answer.await?, &mut files)?;
        }
    }
}

/// A reflection stream, one question and answer at a time.
struct Reflection {
    questions: futures_channel::mpsc::UnboundedSender<ServerReflectionRequest>,
    answers: Streaming<ServerReflectionResponse>,
}

impl Reflection {
    /// The answer to `question`; an error answer is its status.
    async fn ask(&mut self, question: MessageRequest) -> Result<MessageResponse, Status> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(question),
        };
        self.questions
            .unbounded_send(request)
            .map_err(|_| Status::unavailable("the reflection stream closed"))?;
        let answer = self
            .answers
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the reflection stream ended early"))?;
        match answer.message_response {
            Some(MessageResponse::ErrorResponse(e)) => {
                Err(Status::new(Code::from(e.error_code), e.error_message))
            }
            Some(answer) => Ok(answer),
            None => Err(Status::internal("an empty reflection answer")),
        }
    }

    /// Ends the stream: no more questions, and the server's OK.
    async fn finish(self) -> Result<(), Status> {
        let Reflection {
            questions,
            mut answers,
        } = self;
        drop(questions);
        match answers.message().await? {
            None => Ok(()),
            Some(_) => Err(Status::internal("reflection answered an unasked question")),
        }
    }
}

/// Adds the files of a `FileDescriptorResponse` to `files`, by name.
fn add_files(
    answer: MessageResponse,
    files: &mut HashMap<String, FileDescriptorProto>,
) -> Result<(), Status> {
    let MessageResponse::FileDescriptorResponse(found) = answer else {
        return Err(Status::internal(
            "reflection answered with no file descriptors",
        ));
    };
    for encoded in found.file_descriptor_proto {
        let file = FileDescriptorProto::decode(encoded)
            .map_err(|e| Status::internal(format!("a bad reflected file descriptor: {e}")))?;
        files.insert(file.name().to_owned(), file);
        if files.len() > MAX_REFLECTED_FILES {
            return Err(Status::resource_exhausted(format!(
                "reflection sent more than {MAX_REFLECTED_FILES} files"
            )));
        }
    }
    Ok(())
}

/// The files ordered so that each comes after the files it imports.
fn in_import_order(files: Vec<FileDescriptorProto>) -> Result<Vec<FileDescriptorProto>, Status> {
    let mut pending = files;
    let mut ordered: Vec<FileDescriptorProto> = Vec::with_capacity(pending.len());
    let mut placed: HashSet<String> = HashSet::new();
    while !pending.is_empty() {
        let before = pending.len();
        let (ready, waiting): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|f| f.dependency.iter().all(|d| placed.contains(d)));
        placed.extend(ready.iter().map(|f| f.name().to_owned()));
        ordered.extend(ready);
        pending = waiting;
        if pending.len() == before {
            return Err(Status::internal(
                "the reflected files import each other in a cycle",
            ));
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, imports: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            dependency: imports.iter().map(|i| i.to_string()).collect(),
            ..FileDescriptorProto::default()
        }
    }

    #[test]
    fn files_are_put_after_their_imports() {
        let files = vec![
            file("c.proto", &["a.proto", "b.proto"]),
            file("b.proto", &["a.proto"]),
            file("a.proto", &[]),
        ];
        let names: Vec<String> = in_import_order(files)
            .unwrap()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(names, ["a.proto", "b.proto", "c.proto"]);
        let cycle = vec![file("x.proto", &["y.proto"]), file("y.proto", &["x.proto"])];
        assert_eq!(in_import_order(cycle).unwrap_err().code(), Code::Internal);
    }
}
