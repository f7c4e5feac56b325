//! Generates the CSI gRPC code from `proto/csi.proto` with a pure-Rust
//! protobuf compiler, and a redacting `Debug` for every message that carries
//! a field marked `csi_secret`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let text = std::fs::read_to_string("proto/csi.proto")?;
    let secret_fields = secret_fields(&text);

    let descriptors = protox::compile(["csi.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut redact = String::new();
    for file in &descriptors.file {
        for message in &file.message_type {
            let name = message.name();
            let Some(secrets) = secret_fields.get(name) else {
                continue;
            };
            let mut body = String::new();
            let mut seen_oneofs = Vec::new();
            for field in &message.field {
                let rust_name = match field.oneof_index {
                    Some(index) if !field.proto3_optional() => {
                        let oneof = message.oneof_decl[index as usize].name().to_string();
                        if seen_oneofs.contains(&oneof) {
                            continue;
                        }
                        seen_oneofs.push(oneof.clone());
                        oneof
                    }
                    _ => field.name().to_string(),
                };
                if secrets.contains(&field.name().to_string()) {
                    writeln!(
                        body,
                        "            .field({rust_name:?}, &crate::csi::RedactedMap(&self.{rust_name}))"
                    )?;
                } else {
                    writeln!(body, "            .field({rust_name:?}, &self.{rust_name})")?;
                }
            }
            writeln!(
                redact,
                "impl ::core::fmt::Debug for {name} {{\n    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{\n        f.debug_struct({name:?})\n{body}            .finish()\n    }}\n}}\n"
            )?;
        }
    }
    std::fs::write(out_dir.join("csi_redacted_debug.rs"), redact)?;

    let skip: Vec<String> = secret_fields
        .keys()
        .map(|m| format!(".csi.v1.{m}"))
        .collect();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .skip_debug(skip)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Message name -> names of its fields carrying the `csi_secret` option,
/// read from the proto text (the option may sit on the line after the field).
fn secret_fields(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut result: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack: Vec<String> = Vec::new();
    let mut last_field: Option<String> = None;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if code.ends_with('{') {
            let message = code.strip_prefix("message ").unwrap_or("");
            stack.push(message.trim_end_matches('{').trim().to_string());
        } else if code == "}" {
            stack.pop();
        } else if let Some(name) = field_name(code) {
            last_field = Some(name);
        }
        if code.contains("(csi_secret) = true")
            && let (Some(message), Some(field)) = (
                stack.iter().rev().find(|m| !m.is_empty()),
                last_field.clone(),
            )
        {
            result.entry(message.clone()).or_default().push(field);
        }
    }
    result
}

/// The field name of a declaration such as `map<string, string> secrets = 5`.
fn field_name(code: &str) -> Option<String> {
    let (left, _) = code.split_once('=')?;
    let name = left.split_whitespace().last()?;
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some(name.to_string())
    } else {
        None
    }
}
