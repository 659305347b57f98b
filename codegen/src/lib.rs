//! `build.rs` code generation for anygrpc.
//!
//! Turns `.proto` files into prost message types, a typed client per service
//! (`<service>_client::<Service>Client`) and a server trait with its adapter
//! (`<service>_server::{<Service>, <Service>Server}`). The protos are parsed by protox, a
//! protobuf compiler written in Rust, so no `protoc` binary is needed.
//!
//! ```no_run
//! // build.rs
//! fn main() -> std::io::Result<()> {
//!     anygrpc_build::compile_protos(&["proto/helloworld.proto"], &["proto"])
//! }
//! ```
//! and in the crate: `mod pb { include!(concat!(env!("OUT_DIR"), "/helloworld.rs")); }`.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
};

use prost::Message as _;

/// Compiles protos with default settings: messages, clients and servers, into `OUT_DIR`.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> io::Result<()> {
    configure().compile(protos, includes)
}

/// Starts a configuration.
pub fn configure() -> Builder {
    Builder {
        build_client: true,
        build_server: true,
        out_dir: None,
        file_descriptor_set_path: None,
        config: prost_build::Config::new(),
    }
}

/// Code generation settings.
#[derive(Debug)]
pub struct Builder {
    build_client: bool,
    build_server: bool,
    out_dir: Option<PathBuf>,
    file_descriptor_set_path: Option<PathBuf>,
    config: prost_build::Config,
}

impl Builder {
    /// Generate clients (default: yes).
    pub fn build_client(mut self, yes: bool) -> Self {
        self.build_client = yes;
        self
    }

    /// Generate server traits (default: yes).
    pub fn build_server(mut self, yes: bool) -> Self {
        self.build_server = yes;
        self
    }

    /// Where to write the generated files (default: `OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Also write the encoded `FileDescriptorSet` here (for reflection).
    pub fn file_descriptor_set_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.file_descriptor_set_path = Some(path.into());
        self
    }

    /// Customizes the prost configuration (attributes, extern paths, ...).
    pub fn prost_config(mut self, f: impl FnOnce(&mut prost_build::Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Parses the protos and writes one Rust file per package.
    pub fn compile(
        mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> io::Result<()> {
        for path in protos
            .iter()
            .map(AsRef::as_ref)
            .chain(includes.iter().map(AsRef::as_ref))
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        let fds = protox::compile(protos, includes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if let Some(path) = &self.file_descriptor_set_path {
            std::fs::write(path, fds.encode_to_vec())?;
        }
        let out_dir = match self.out_dir.take() {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| io::Error::other("OUT_DIR is not set: not in a build script?"))?,
        };
        self.config.out_dir(&out_dir);
        self.config.service_generator(Box::new(ServiceGenerator {
            client: self.build_client,
            server: self.build_server,
        }));
        self.config.compile_fds(fds.clone())?;
        embed_descriptors(&out_dir, fds)
    }
}

/// Appends to each generated package file a `FILE_DESCRIPTOR_SET` constant: the encoded
/// descriptors of the package's files and everything they import (without source info), which
/// is what a reflection service serves.
fn embed_descriptors(out_dir: &Path, mut fds: prost_types::FileDescriptorSet) -> io::Result<()> {
    use std::collections::{BTreeMap, HashSet};

    for file in &mut fds.file {
        file.source_code_info = None;
    }
    let by_name: BTreeMap<&str, &prost_types::FileDescriptorProto> =
        fds.file.iter().map(|f| (f.name(), f)).collect();
    let mut packages: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for file in &fds.file {
        packages
            .entry(file.package())
            .or_default()
            .push(file.name());
    }
    for (package, roots) in packages {
        let name = if package.is_empty() { "_" } else { package };
        let path = out_dir.join(format!("{name}.rs"));
        if !path.exists() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut stack = roots;
        while let Some(name) = stack.pop() {
            if let Some(file) = by_name.get(name).filter(|_| seen.insert(name)) {
                order.push((*file).clone());
                stack.extend(file.dependency.iter().map(String::as_str));
            }
        }
        let set = prost_types::FileDescriptorSet { file: order }.encode_to_vec();
        let mut code = std::fs::read_to_string(&path)?;
        let _ = write!(
            code,
            "\n/// The encoded `FileDescriptorSet` of this package's files and their imports, for \
             \n/// `anygrpc::reflection::Builder::register_encoded_file_descriptor_set`.\
             \n#[allow(dead_code)]\
             \npub const FILE_DESCRIPTOR_SET: &[u8] = &{set:?};\n"
        );
        std::fs::write(&path, code)?;
    }
    Ok(())
}

/// Writes the client and server code for each service.
struct ServiceGenerator {
    client: bool,
    server: bool,
}

impl prost_build::ServiceGenerator for ServiceGenerator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        if self.client {
            generate_client(&service, buf);
        }
        if self.server {
            generate_server(&service, buf);
        }
    }
}

/// `UpperCamel` to `snake_case`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0 && (prev_lower || (chars[i - 1].is_uppercase() && next_lower)) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

fn full_name(service: &prost_build::Service) -> String {
    if service.package.is_empty() {
        service.proto_name.clone()
    } else {
        format!("{}.{}", service.package, service.proto_name)
    }
}

fn doc(buf: &mut String, indent: &str, comments: &prost_build::Comments) {
    for line in &comments.leading {
        let _ = writeln!(buf, "{indent}///{}", line.trim_end());
    }
}

/// A method's request and response types, as paths from the generated submodules.
fn message_types(method: &prost_build::Method) -> (String, String) {
    (
        format!("super::{}", method.input_type),
        format!("super::{}", method.output_type),
    )
}

fn generate_client(service: &prost_build::Service, buf: &mut String) {
    let module = format!("{}_client", snake_case(&service.name));
    let client = format!("{}Client", service.name);
    let full = full_name(service);
    let _ = write!(
        buf,
        r#"
/// Client for the `{full}` service.
pub mod {module} {{
    #![allow(unused_imports, clippy::wildcard_imports)]
    use anygrpc::codegen::*;

"#
    );
    doc(buf, "    ", &service.comments);
    let _ = write!(
        buf,
        r#"    #[derive(Debug, Clone)]
    pub struct {client} {{
        inner: Grpc,
    }}

    impl {client} {{
        /// A client that sends its calls over `channel`.
        pub fn new(channel: Channel) -> Self {{
            {client} {{ inner: Grpc::new(channel).generated_stub() }}
        }}

        /// Compresses request messages with `encoding` (e.g. `"gzip"`), overriding the
        /// channel's `send_compression`.
        pub fn send_compression(mut self, encoding: &'static str) -> Self {{
            self.inner = self.inner.send_compression(encoding);
            self
        }}

        /// Limits response messages to `bytes`, overriding the channel's
        /// `max_recv_message_size`.
        pub fn max_recv_message_size(mut self, bytes: usize) -> Self {{
            self.inner = self.inner.max_recv_message_size(bytes);
            self
        }}

        /// Limits request messages to `bytes`, overriding the channel's
        /// `max_send_message_size`.
        pub fn max_send_message_size(mut self, bytes: usize) -> Self {{
            self.inner = self.inner.max_send_message_size(bytes);
            self
        }}
"#
    );
    for method in &service.methods {
        let path = format!("/{full}/{}", method.proto_name);
        let (input, output) = message_types(method);
        let name = &method.name;
        let codec = format!("ProstCodec::<{input}, {output}>::new()");
        let _ = writeln!(buf);
        doc(buf, "        ", &method.comments);
        let (param, ret, call, into) = match (method.client_streaming, method.server_streaming) {
            (false, false) => (
                format!("impl IntoRequest<{input}>"),
                output.clone(),
                "unary",
                "into_request",
            ),
            (false, true) => (
                format!("impl IntoRequest<{input}>"),
                format!("Streaming<{output}>"),
                "server_streaming",
                "into_request",
            ),
            (true, false) => (
                format!("impl IntoStreamingRequest<Message = {input}>"),
                output.clone(),
                "client_streaming",
                "into_streaming_request",
            ),
            (true, true) => (
                format!("impl IntoStreamingRequest<Message = {input}>"),
                format!("Streaming<{output}>"),
                "streaming",
                "into_streaming_request",
            ),
        };
        let _ = write!(
            buf,
            r#"        pub async fn {name}(
            &self,
            request: {param},
        ) -> Result<Response<{ret}>, Status> {{
            self.inner
                .{call}(PathAndQuery::from_static("{path}"), {codec}, request.{into}())
                .await
        }}
"#
        );
    }
    buf.push_str("    }\n}\n");
}

fn generate_server(service: &prost_build::Service, buf: &mut String) {
    let module = format!("{}_server", snake_case(&service.name));
    let trait_name = &service.name;
    let server = format!("{}Server", service.name);
    let full = full_name(service);
    let _ = write!(
        buf,
        r#"
/// Server side of the `{full}` service.
pub mod {module} {{
    #![allow(unused_imports, clippy::wildcard_imports)]
    use anygrpc::codegen::*;

    /// The fully qualified service name.
    pub const SERVICE_NAME: &str = "{full}";

    /// The service's methods, as named in its path.
    pub const METHODS: &[&str] = &[{methods}];

"#,
        methods = service
            .methods
            .iter()
            .map(|m| format!("{:?}", m.proto_name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    doc(buf, "    ", &service.comments);
    if !service.comments.leading.is_empty() {
        let _ = writeln!(buf, "    ///");
    }
    let _ = writeln!(
        buf,
        "    /// A handler that blocks its thread (a synchronous driver, a long computation)\n    \
         /// should do that work in `anygrpc::rt::spawn_blocking(..).await`, so that the other\n    \
         /// calls of its connection are not held up behind it."
    );
    let _ = writeln!(buf, "    pub trait {trait_name}: Send + Sync + 'static {{");
    for method in &service.methods {
        let (input, output) = message_types(method);
        let request = if method.client_streaming {
            format!("Request<Streaming<{input}>>")
        } else {
            format!("Request<{input}>")
        };
        let response = if method.server_streaming {
            format!("Response<ResponseStream<{output}>>")
        } else {
            format!("Response<{output}>")
        };
        doc(buf, "        ", &method.comments);
        let _ = writeln!(
            buf,
            "        fn {}(&self, request: {request}) -> impl Future<Output = Result<{response}, Status>> + Send;",
            method.name
        );
    }
    let _ = write!(
        buf,
        r#"    }}

    /// Serves a [`{trait_name}`] implementation; add it to a server with `add_service`.
    pub struct {server}<T> {{
        inner: Arc<T>,
    }}

    impl<T> {server}<T> {{
        /// Serves `inner`.
        pub fn new(inner: T) -> Self {{
            {server} {{ inner: Arc::new(inner) }}
        }}

        /// Serves a shared implementation.
        pub fn from_arc(inner: Arc<T>) -> Self {{
            {server} {{ inner }}
        }}
    }}

    impl<T> Clone for {server}<T> {{
        fn clone(&self) -> Self {{
            {server} {{ inner: self.inner.clone() }}
        }}
    }}

    impl<T> std::fmt::Debug for {server}<T> {{
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{
            f.write_str("{server}")
        }}
    }}

    impl<T: {trait_name}> Service for {server}<T> {{
        fn name(&self) -> &'static str {{
            SERVICE_NAME
        }}

        fn has_method(&self, method: &str) -> bool {{
            METHODS.contains(&method)
        }}

        fn call(&self, method: &str, call: ServerCall) -> BoxFuture<'static, ()> {{
            let inner = self.inner.clone();
            match method {{
"#
    );
    for method in &service.methods {
        let (input, output) = message_types(method);
        let kind = match (method.client_streaming, method.server_streaming) {
            (false, false) => "unary",
            (false, true) => "server_streaming",
            (true, false) => "client_streaming",
            (true, true) => "streaming",
        };
        let _ = writeln!(
            buf,
            r#"                "{}" => Box::pin(call.{kind}(ProstCodec::<{output}, {input}>::new(), move |request| async move {{
                    inner.{}(request).await
                }})),"#,
            method.proto_name, method.name
        );
    }
    buf.push_str(
        r#"                _ => Box::pin(call.unimplemented()),
            }
        }
    }
}
"#,
    );
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_cases() {
        assert_eq!(snake_case("Greeter"), "greeter");
        assert_eq!(snake_case("TestService"), "test_service");
        assert_eq!(snake_case("XDSService"), "xds_service");
        assert_eq!(snake_case("RouteGuide2Go"), "route_guide2_go");
    }
}
