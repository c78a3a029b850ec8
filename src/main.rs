//! Dispatch only: the CNI plugin when the runtime execs us with `CNI_COMMAND` set, otherwise the
//! daemon/CLI (argv[0] `terwayd` means `terway daemon`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if args.len() == 1 && std::env::var_os("CNI_COMMAND").is_some() {
        return ExitCode::from(terway::cni::plugin::main());
    }
    terway::cli::main(&argv0, args)
}
