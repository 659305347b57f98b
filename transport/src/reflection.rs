//! Server reflection: `grpc.reflection.v1.ServerReflection` and its predecessor
//! `grpc.reflection.v1alpha.ServerReflection`, which tools such as `grpcurl`, `grpc_cli` and
//! Python's `grpcio-reflection` use to list a server's services and fetch their descriptors.
//!
//! The descriptors come from the code generator: every file `anygrpc-build` writes has a
//! `FILE_DESCRIPTOR_SET` constant holding its package's files and their imports. A server offers
//! reflection only if it adds the service:
//!
//! ```no_run
//! # mod pb { pub const FILE_DESCRIPTOR_SET: &[u8] = &[]; }
//! # fn build() -> Result<(), prost::DecodeError> {
//! let reflection = anygrpc::reflection::Builder::new()
//!     .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)?
//!     .build();
//! let server = anygrpc::Server::builder()
//!     .add_service(reflection.v1alpha())
//!     .add_service(reflection);
//! # Ok(()) }
//! ```
//!
//! Each answer carries the asked-for file and the files it imports that this stream has not
//! sent yet, as grpc-go does, so a client builds its descriptor pool without repeats.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

use crate::{
    server::{ServerCall, Service},
    ProstCodec, Response, Status,
};

/// The service's one method, under both names.
const METHOD: &str = "ServerReflectionInfo";

/// `ServerReflectionRequest` (the same message in v1 and v1alpha).
#[derive(Clone, PartialEq, Message)]
pub struct ServerReflectionRequest {
    /// The host the client asked about (echoed back).
    #[prost(string, tag = "1")]
    pub host: String,
    /// What the client asks.
    #[prost(oneof = "MessageRequest", tags = "3, 4, 5, 6, 7")]
    pub message_request: Option<MessageRequest>,
}

/// The question of a [`ServerReflectionRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MessageRequest {
    /// The file with this name, e.g. `helloworld.proto`.
    #[prost(string, tag = "3")]
    FileByFilename(String),
    /// The file that defines this fully qualified symbol (message, enum, service, method, ...).
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    /// The file that defines this extension.
    #[prost(message, tag = "5")]
    FileContainingExtension(ExtensionRequest),
    /// The extension numbers of this message type.
    #[prost(string, tag = "6")]
    AllExtensionNumbersOfType(String),
    /// The services the server offers (the string's content is ignored).
    #[prost(string, tag = "7")]
    ListServices(String),
}

/// An extension of a message type, by number.
#[derive(Clone, PartialEq, Message)]
pub struct ExtensionRequest {
    /// The extended message's fully qualified name.
    #[prost(string, tag = "1")]
    pub containing_type: String,
    /// The extension's field number.
    #[prost(int32, tag = "2")]
    pub extension_number: i32,
}

/// `ServerReflectionResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ServerReflectionResponse {
    /// The request's host.
    #[prost(string, tag = "1")]
    pub valid_host: String,
    /// The request this answers.
    #[prost(message, optional, tag = "2")]
    pub original_request: Option<ServerReflectionRequest>,
    /// The answer.
    #[prost(oneof = "MessageResponse", tags = "4, 5, 6, 7")]
    pub message_response: Option<MessageResponse>,
}

/// The answer of a [`ServerReflectionResponse`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MessageResponse {
    /// Serialized `FileDescriptorProto`s.
    #[prost(message, tag = "4")]
    FileDescriptorResponse(FileDescriptorResponse),
    /// A message type's extension numbers.
    #[prost(message, tag = "5")]
    AllExtensionNumbersResponse(ExtensionNumberResponse),
    /// The services.
    #[prost(message, tag = "6")]
    ListServicesResponse(ListServiceResponse),
    /// Why the request failed.
    #[prost(message, tag = "7")]
    ErrorResponse(ErrorResponse),
}

/// Serialized `FileDescriptorProto`s: the asked-for file first, then imports not sent before.
#[derive(Clone, PartialEq, Message)]
pub struct FileDescriptorResponse {
    /// The files.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub file_descriptor_proto: Vec<Bytes>,
}

/// The extension numbers of a message type.
#[derive(Clone, PartialEq, Message)]
pub struct ExtensionNumberResponse {
    /// The message type's fully qualified name.
    #[prost(string, tag = "1")]
    pub base_type_name: String,
    /// Its extensions' numbers.
    #[prost(int32, repeated, tag = "2")]
    pub extension_number: Vec<i32>,
}

/// The services a server offers.
#[derive(Clone, PartialEq, Message)]
pub struct ListServiceResponse {
    /// One entry per service.
    #[prost(message, repeated, tag = "1")]
    pub service: Vec<ServiceResponse>,
}

/// A service's fully qualified name.
#[derive(Clone, PartialEq, Message)]
pub struct ServiceResponse {
    /// E.g. `helloworld.Greeter`.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// A failed request: a gRPC status code and message.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorResponse {
    /// The status code, e.g. 5 (NOT_FOUND).
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// Collects descriptors for a [`ReflectionService`].
#[derive(Debug, Default)]
pub struct Builder {
    files: Vec<FileDescriptorProto>,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the files of an encoded `FileDescriptorSet`, e.g. a generated `FILE_DESCRIPTOR_SET`.
    pub fn register_encoded_file_descriptor_set(
        self,
        encoded: &[u8],
    ) -> Result<Self, prost::DecodeError> {
        Ok(self.register_file_descriptor_set(FileDescriptorSet::decode(encoded)?))
    }

    /// Adds the files of a `FileDescriptorSet`. A file registered twice is kept once.
    pub fn register_file_descriptor_set(mut self, set: FileDescriptorSet) -> Self {
        self.files.extend(set.file);
        self
    }

    /// Indexes the files by name, symbol and extension.
    pub fn build(self) -> ReflectionService {
        let mut index = Index::default();
        for file in self.files {
            index.add(file);
        }
        ReflectionService {
            index: Arc::new(index),
        }
    }
}

/// The descriptors a reflection service answers from.
#[derive(Debug, Default)]
struct Index {
    /// Each file, encoded, with the names of the files it imports.
    files: HashMap<String, (Bytes, Vec<String>)>,
    /// Fully qualified symbol to the file that defines it.
    symbols: HashMap<String, String>,
    /// (extended type, number) to the file that defines the extension.
    extensions: HashMap<(String, i32), String>,
    services: BTreeSet<String>,
}

impl Index {
    fn add(&mut self, mut file: FileDescriptorProto) {
        let name = file.name().to_owned();
        if self.files.contains_key(&name) {
            return;
        }
        file.source_code_info = None;
        let scope = file.package().to_owned();
        for service in &file.service {
            let service_name = qualify(&scope, service.name());
            for method in &service.method {
                self.symbol(qualify(&service_name, method.name()), &name);
            }
            self.services.insert(service_name.clone());
            self.symbol(service_name, &name);
        }
        for message in &file.message_type {
            self.message(&scope, message, &name);
        }
        for enumeration in &file.enum_type {
            self.enumeration(&scope, enumeration, &name);
        }
        for extension in &file.extension {
            self.extension(&scope, extension, &name);
        }
        if !scope.is_empty() {
            // A package is a symbol too (protobuf's FindFileContainingSymbol answers it).
            self.symbols.entry(scope).or_insert_with(|| name.clone());
        }
        let encoded = Bytes::from(file.encode_to_vec());
        self.files.insert(name, (encoded, file.dependency));
    }

    fn symbol(&mut self, symbol: String, file: &str) {
        self.symbols.insert(symbol, file.to_owned());
    }

    fn message(&mut self, scope: &str, message: &DescriptorProto, file: &str) {
        let name = qualify(scope, message.name());
        for field in &message.field {
            self.symbol(qualify(&name, field.name()), file);
        }
        for oneof in &message.oneof_decl {
            self.symbol(qualify(&name, oneof.name()), file);
        }
        for nested in &message.nested_type {
            self.message(&name, nested, file);
        }
        for enumeration in &message.enum_type {
            self.enumeration(&name, enumeration, file);
        }
        for extension in &message.extension {
            self.extension(&name, extension, file);
        }
        self.symbol(name, file);
    }

    fn enumeration(
        &mut self,
        scope: &str,
        enumeration: &prost_types::EnumDescriptorProto,
        file: &str,
    ) {
        let name = qualify(scope, enumeration.name());
        // Enum values are siblings of their enum in protobuf's scoping.
        for value in &enumeration.value {
            self.symbol(qualify(scope, value.name()), file);
        }
        self.symbol(name, file);
    }

    fn extension(&mut self, scope: &str, field: &prost_types::FieldDescriptorProto, file: &str) {
        self.symbol(qualify(scope, field.name()), file);
        let extendee = field.extendee().trim_start_matches('.').to_owned();
        self.extensions
            .insert((extendee, field.number()), file.to_owned());
    }

    /// The file and, depth first, its imports that `sent` does not hold yet.
    fn file_with_imports(&self, name: &str, sent: &mut HashSet<String>) -> Option<Vec<Bytes>> {
        let (encoded, imports) = self.files.get(name)?;
        sent.insert(name.to_owned());
        let mut out = vec![encoded.clone()];
        let mut stack: Vec<&String> = imports.iter().rev().collect();
        while let Some(name) = stack.pop() {
            // Imports the registered sets lack (a well-known type, say) are left to the client.
            let Some((encoded, imports)) = self.files.get(name) else {
                continue;
            };
            if sent.insert(name.clone()) {
                out.push(encoded.clone());
                stack.extend(imports.iter().rev());
            }
        }
        Some(out)
    }

    fn answer(&self, request: &MessageRequest, sent: &mut HashSet<String>) -> MessageResponse {
        let file = |name: Option<&String>, what: String, sent: &mut HashSet<String>| match name
            .and_then(|name| self.file_with_imports(name, sent))
        {
            Some(files) => MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto: files,
            }),
            None => not_found(what),
        };
        match request {
            MessageRequest::FileByFilename(name) => {
                file(Some(name), format!("file not found: {name}"), sent)
            }
            MessageRequest::FileContainingSymbol(symbol) => file(
                self.symbols.get(symbol.trim_start_matches('.')),
                format!("symbol not found: {symbol}"),
                sent,
            ),
            MessageRequest::FileContainingExtension(ext) => file(
                self.extensions.get(&(
                    ext.containing_type.trim_start_matches('.').to_owned(),
                    ext.extension_number,
                )),
                format!(
                    "extension not found: {} {}",
                    ext.containing_type, ext.extension_number
                ),
                sent,
            ),
            MessageRequest::AllExtensionNumbersOfType(name) => {
                let name = name.trim_start_matches('.');
                if !self.symbols.contains_key(name) {
                    return not_found(format!("type not found: {name}"));
                }
                let mut numbers: Vec<i32> = self
                    .extensions
                    .keys()
                    .filter(|(extended, _)| extended == name)
                    .map(|(_, number)| *number)
                    .collect();
                numbers.sort_unstable();
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: name.to_owned(),
                    extension_number: numbers,
                })
            }
            MessageRequest::ListServices(_) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
        }
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn not_found(message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse {
        error_code: crate::Code::NotFound as i32,
        error_message: message,
    })
}

/// The `grpc.reflection.v1.ServerReflection` service; [`v1alpha`](Self::v1alpha) gives the
/// same answers under the older name. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReflectionService {
    index: Arc<Index>,
}

impl ReflectionService {
    /// The same service as `grpc.reflection.v1alpha.ServerReflection`, for older clients.
    pub fn v1alpha(&self) -> ReflectionServiceV1Alpha {
        ReflectionServiceV1Alpha(self.clone())
    }

    /// The services the registered descriptors define, sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.index.services.iter().map(String::as_str)
    }

    fn serve(&self, method: &str, call: ServerCall) -> crate::rt::BoxFuture<'static, ()> {
        if method != METHOD {
            return Box::pin(call.unimplemented());
        }
        let index = self.index.clone();
        Box::pin(call.streaming(
            ProstCodec::<ServerReflectionResponse, ServerReflectionRequest>::new(),
            move |request| async move {
                let mut sent = HashSet::new();
                let responses = request.into_inner().map(move |request| {
                    let request = request?;
                    let Some(question) = &request.message_request else {
                        return Err(Status::invalid_argument(
                            "reflection request without a question",
                        ));
                    };
                    Ok(ServerReflectionResponse {
                        valid_host: request.host.clone(),
                        message_response: Some(index.answer(question, &mut sent)),
                        original_request: Some(request),
                    })
                });
                Ok(Response::new(
                    Box::pin(responses) as crate::ResponseStream<_>
                ))
            },
        ))
    }
}

impl Service for ReflectionService {
    fn name(&self) -> &'static str {
        "grpc.reflection.v1.ServerReflection"
    }

    fn has_method(&self, method: &str) -> bool {
        method == METHOD
    }

    fn call(&self, method: &str, call: ServerCall) -> crate::rt::BoxFuture<'static, ()> {
        self.serve(method, call)
    }
}

/// [`ReflectionService`] under `grpc.reflection.v1alpha.ServerReflection`.
#[derive(Clone, Debug)]
pub struct ReflectionServiceV1Alpha(ReflectionService);

impl Service for ReflectionServiceV1Alpha {
    fn name(&self) -> &'static str {
        "grpc.reflection.v1alpha.ServerReflection"
    }

    fn has_method(&self, method: &str) -> bool {
        method == METHOD
    }

    fn call(&self, method: &str, call: ServerCall) -> crate::rt::BoxFuture<'static, ()> {
        self.0.serve(method, call)
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{
        EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto, MethodDescriptorProto,
        ServiceDescriptorProto,
    };

    use super::*;

    fn files() -> FileDescriptorSet {
        let base = FileDescriptorProto {
            name: Some("base.proto".into()),
            package: Some("demo".into()),
            message_type: vec![DescriptorProto {
                name: Some("Base".into()),
                field: vec![FieldDescriptorProto {
                    name: Some("id".into()),
                    number: Some(1),
                    ..Default::default()
                }],
                nested_type: vec![DescriptorProto {
                    name: Some("Inner".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            enum_type: vec![EnumDescriptorProto {
                name: Some("Color".into()),
                value: vec![EnumValueDescriptorProto {
                    name: Some("RED".into()),
                    number: Some(0),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let api = FileDescriptorProto {
            name: Some("api.proto".into()),
            package: Some("demo".into()),
            dependency: vec!["base.proto".into()],
            service: vec![ServiceDescriptorProto {
                name: Some("Api".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("Get".into()),
                    input_type: Some(".demo.Base".into()),
                    output_type: Some(".demo.Base".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            extension: vec![FieldDescriptorProto {
                name: Some("tag".into()),
                number: Some(100),
                extendee: Some(".demo.Base".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        FileDescriptorSet {
            file: vec![base, api],
        }
    }

    fn names(response: MessageResponse) -> Vec<String> {
        match response {
            MessageResponse::FileDescriptorResponse(files) => files
                .file_descriptor_proto
                .iter()
                .map(|b| {
                    FileDescriptorProto::decode(b.as_ref())
                        .unwrap()
                        .name()
                        .to_owned()
                })
                .collect(),
            other => panic!("not files: {other:?}"),
        }
    }

    #[test]
    fn answers_every_kind_of_question() {
        let service = Builder::new().register_file_descriptor_set(files()).build();
        let index = &service.index;
        let mut sent = HashSet::new();
        assert_eq!(
            index.answer(&MessageRequest::ListServices(String::new()), &mut sent),
            MessageResponse::ListServicesResponse(ListServiceResponse {
                service: vec![ServiceResponse {
                    name: "demo.Api".into()
                }]
            })
        );
        for symbol in ["demo.Api", "demo.Api.Get", ".demo.Api", "demo.tag"] {
            let mut sent = HashSet::new();
            let question = MessageRequest::FileContainingSymbol(symbol.into());
            assert_eq!(
                names(index.answer(&question, &mut sent)),
                ["api.proto", "base.proto"]
            );
        }
        for symbol in [
            "demo.Base",
            "demo.Base.id",
            "demo.Base.Inner",
            "demo.Color",
            "demo.RED",
        ] {
            let question = MessageRequest::FileContainingSymbol(symbol.into());
            assert_eq!(
                names(index.answer(&question, &mut HashSet::new())),
                ["base.proto"]
            );
        }
        let question = MessageRequest::FileContainingExtension(ExtensionRequest {
            containing_type: "demo.Base".into(),
            extension_number: 100,
        });
        assert_eq!(
            names(index.answer(&question, &mut sent)),
            ["api.proto", "base.proto"]
        );
        let question = MessageRequest::AllExtensionNumbersOfType("demo.Base".into());
        assert_eq!(
            index.answer(&question, &mut sent),
            MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                base_type_name: "demo.Base".into(),
                extension_number: vec![100],
            })
        );
    }

    #[test]
    fn a_stream_sends_each_import_once_but_always_the_asked_for_file() {
        let service = Builder::new().register_file_descriptor_set(files()).build();
        let mut sent = HashSet::new();
        let api = MessageRequest::FileByFilename("api.proto".into());
        let base = MessageRequest::FileByFilename("base.proto".into());
        assert_eq!(
            names(service.index.answer(&api, &mut sent)),
            ["api.proto", "base.proto"]
        );
        assert_eq!(names(service.index.answer(&api, &mut sent)), ["api.proto"]);
        assert_eq!(
            names(service.index.answer(&base, &mut sent)),
            ["base.proto"]
        );
    }

    #[test]
    fn unknown_names_are_not_found() {
        let service = Builder::new().register_file_descriptor_set(files()).build();
        for question in [
            MessageRequest::FileByFilename("nope.proto".into()),
            MessageRequest::FileContainingSymbol("demo.Nope".into()),
            MessageRequest::AllExtensionNumbersOfType("demo.Nope".into()),
            MessageRequest::FileContainingExtension(ExtensionRequest {
                containing_type: "demo.Base".into(),
                extension_number: 7,
            }),
        ] {
            match service.index.answer(&question, &mut HashSet::new()) {
                MessageResponse::ErrorResponse(e) => assert_eq!(e.error_code, 5),
                other => panic!("{question:?} answered {other:?}"),
            }
        }
    }
}
