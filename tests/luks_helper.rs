//! The LUKS helper process (`multicsi-luks`) over its real pipe: requests
//! as the node plugin encodes them, replies and errors as it decodes them.
//! A LUKS2 header on a plain file needs no device-mapper.

use std::path::Path;

use multicsi::csi::params::Luks;
use multicsi::node::luks::{LuksError, Pbkdf};
use multicsi::node::luks_helper::{Reply, Request, call_with};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_multicsi-luks"))
}

const CHEAP: Pbkdf = Pbkdf {
    memory_kib: 1024,
    iterations: 4,
};

#[test]
fn format_then_keys_are_checked_in_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("volume.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let luks = Luks {
        cipher: "aes-xts-plain64".to_string(),
        key_size_bits: 512,
    };
    let reply = call_with(
        helper(),
        &Request::format(&image, b"right key", &luks, &CHEAP),
    );
    assert!(matches!(reply, Ok(Reply::Done)), "{reply:?}");
    let check = |key: &[u8]| {
        call_with(
            helper(),
            &Request::CheckKey {
                device: image.clone(),
                key: key.to_vec(),
            },
        )
    };
    assert!(matches!(check(b"right key"), Ok(Reply::Done)));
    match check(b"wrong key") {
        Err(LuksError::WrongKey { device }) => assert_eq!(device, image),
        other => panic!("a wrong key must be refused: {other:?}"),
    }
    let header = std::process::Command::new("cryptsetup")
        .arg("luksDump")
        .arg(&image)
        .output()
        .expect("cryptsetup (cryptsetup-bin) is installed by scripts/test.sh");
    let dump = String::from_utf8_lossy(&header.stdout);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("aes-xts-plain64"), "{dump}");
    assert!(dump.contains("argon2id"), "{dump}");
    assert!(dump.contains("Memory:     1024"), "{dump}");
}

#[test]
fn a_blank_file_is_not_luks_and_the_message_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("blank.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let reply = call_with(
        helper(),
        &Request::CheckKey {
            device: image.clone(),
            key: b"key".to_vec(),
        },
    );
    match reply {
        Err(e @ LuksError::NotLuks { .. }) => {
            assert!(e.to_string().contains("holds no LUKS header"), "{e}")
        }
        other => panic!("a blank device has no header: {other:?}"),
    }
}

#[test]
fn a_missing_helper_is_a_clear_error() {
    let reply = call_with(
        Path::new("/nonexistent/multicsi-luks"),
        &Request::Status {
            name: "luks-x".to_string(),
        },
    );
    match reply {
        Err(e @ LuksError::Helper { .. }) => {
            let text = e.to_string();
            assert!(text.contains("/nonexistent/multicsi-luks"), "{text}");
            assert!(text.contains("cannot start it"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_helper_refuses_arguments_and_garbage() {
    let out = std::process::Command::new(helper())
        .arg("--key=secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(helper())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreadable request"));
}

#[test]
fn the_serving_binary_does_not_load_libcryptsetup() {
    // The point of the helper: `multicsi` itself never maps libcryptsetup.
    let out = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_multicsi"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("libc.so"), "{text}");
    assert!(!text.contains("libcryptsetup"), "{text}");
}

#[test]
fn closing_a_mapping_that_is_not_open_is_done() {
    let reply = call_with(
        helper(),
        &Request::Close {
            name: "luks-multicsi-test-never-opened".to_string(),
        },
    );
    assert!(matches!(reply, Ok(Reply::Done)), "{reply:?}");
}
