//! Running the operator CLI (the binary) and what it printed.

use std::process::Stdio;
use std::time::Duration;

use super::PATIENCE;

/// How a run of the CLI ended and what it printed.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Asserts the exit code, showing everything printed when it differs.
    pub fn expect_code(&self, code: i32) -> &CliRun {
        assert_eq!(self.code, code, "exit code of the CLI; {self:#?}");
        self
    }
}

/// Runs the service binary with `args` and only the environment `env`, feeding it `stdin`;
/// fails the test if it has not exited within [`PATIENCE`].
pub async fn run_cli(env: &[(String, String)], args: &[&str], stdin: &[u8]) -> CliRun {
    run_cli_within(PATIENCE, env, args, stdin).await
}

/// [`run_cli`], failing the test if the CLI has not exited within `limit`.
pub async fn run_cli_within(
    limit: Duration,
    env: &[(String, String)],
    args: &[&str],
    stdin: &[u8],
) -> CliRun {
    let program = [env!("CARGO_BIN_EXE_webhook-dispatcher")];
    let command: Vec<&str> = program.iter().chain(args).copied().collect();
    run_program_within(limit, env, &command, stdin).await
}

/// Runs `command` (program and arguments) with only the environment `env`, feeding it `stdin`.
pub(crate) async fn run_program_within(
    limit: Duration,
    env: &[(String, String)],
    command: &[&str],
    stdin: &[u8],
) -> CliRun {
    use tokio::io::AsyncWriteExt;
    let (program, args) = command.split_first().expect("a program");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the CLI");
    let mut input = child.stdin.take().expect("piped stdin");
    // A CLI that exits before reading its input (bad flags, say) closes the pipe: not an error.
    if let Err(e) = input.write_all(stdin).await
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        panic!("writing the CLI's stdin: {e}");
    }
    drop(input);
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not exit within {limit:?}"))
        .expect("the CLI's output");
    CliRun {
        code: output.status.code().expect("the CLI exited by itself"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
