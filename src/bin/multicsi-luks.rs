//! multicsi-luks: the node plugin's LUKS work (libcryptsetup) in a process
//! of its own; it reads one request on its standard input and writes one
//! reply. Installed beside `multicsi`, which runs it.

fn main() -> std::process::ExitCode {
    multicsi::node::luks_helper::serve()
}
