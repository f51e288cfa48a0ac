//! The files and processes of a [`PrivateBroker`] node: its config and plugins files, the server
//! started as the `rabbitmq` user in a process group of its own, and the watchdog that cleans up
//! after a test process that died without running `Drop`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::private_broker::{PrivateBroker, SERVER};

impl PrivateBroker {
    /// Config files of the node's own, everything owned by the user the node runs as.
    pub(super) fn write_files(&self, plugins: &[&str], conf: &str) {
        for sub in ["", "mnesia", "log"] {
            fs::create_dir(self.dir.join(sub)).expect("private broker folder");
        }
        let files = [
            (
                "rabbitmq.conf",
                format!(
                    "listeners.tcp.default = 127.0.0.1:{}\nlog.console = false\nlog.file.level = info\n{conf}",
                    self.port
                ),
            ),
            ("advanced.config", "[].\n".into()),
            ("enabled_plugins", format!("[{}].\n", plugins.join(","))),
            // Replaces /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost, ...).
            ("rabbitmq-env.conf", "# private test node\n".into()),
        ];
        for (name, text) in files {
            fs::write(self.dir.join(name), text).expect("private broker file");
        }
        if let Some((uid, gid, _)) = self.user {
            for entry in ["", "mnesia", "log"]
                .iter()
                .map(|s| self.dir.join(s))
                .chain(files_in(&self.dir))
            {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown");
            }
        }
    }

    /// The environment the node and `rabbitmqctl` share: nothing inherited that could point at
    /// the shared node.
    pub(super) fn prepare(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("RABBITMQ_") || key.starts_with("ERL_") {
                cmd.env_remove(key.as_ref());
            }
        }
        let d = |name: &str| self.dir.join(name).into_os_string();
        let env: [(&str, OsString); 14] = [
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string().into()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string().into()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_PID_FILE", d("node.pid")),
            ("ERL_CRASH_DUMP", d("erl_crash.dump")),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            ("LANG", "C.UTF-8".into()),
        ];
        cmd.envs(env).current_dir(&self.dir);
        if let Some((uid, gid, home)) = &self.user {
            // The rabbitmq user's home holds the Erlang cookie both sides need.
            cmd.uid(*uid).gid(*gid).env("HOME", home);
        }
    }

    pub(super) fn spawn_server(&self) -> Child {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .expect("server.out");
        if let Some((uid, gid, _)) = self.user {
            let _ = std::os::unix::fs::chown(self.dir.join("server.out"), Some(uid), Some(gid));
        }
        let mut cmd = Command::new(SERVER);
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("server.out"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts")
    }

    /// Kills the node and removes its folder if this test process dies without `Drop`. In a
    /// process group of its own so a ctrl-c on the terminal does not take it down as well.
    pub(super) fn spawn_watchdog(&self) -> Child {
        const SCRIPT: &str = r#"
            while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
            [ -d "$2" ] || exit 0
            pg=$(cat "$2/server.pgid" 2>/dev/null) && [ -n "$pg" ] && kill -KILL "-$pg" 2>/dev/null
            sleep 2
            rm -rf "$2"
        "#;
        spawn_watchdog(SCRIPT, &[self.dir.as_os_str()])
    }
}

/// Runs the shell `script` with this test process's pid as `$1` and `args` after it, in a
/// process group of its own (a ctrl-c on the terminal does not take it down with the tests).
pub(super) fn spawn_watchdog(script: &str, args: &[&std::ffi::OsStr]) -> Child {
    Command::new("/bin/sh")
        .args(["-c", script, "wdtest-watchdog"])
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("watchdog starts")
}

pub(super) fn signal_group(group: i32, signal: i32) {
    // SAFETY: plain syscall; the group is one this process created and has not reaped yet.
    unsafe { libc::kill(-group, signal) };
}

/// Whether any process of the group is still there.
pub(super) fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(-group, 0) == 0 }
}

/// The files directly in `dir` (none when it cannot be read).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// The `rabbitmq` user to run the node as, when the tests run as root.
pub(super) fn rabbitmq_user() -> Option<(u32, u32, PathBuf)> {
    // SAFETY: geteuid cannot fail; getpwnam returns a pointer to static storage or null, read
    // at once (tests that race on getpwnam read the same entry).
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"rabbitmq".as_ptr());
        if pw.is_null() {
            return None;
        }
        let home = std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned();
        Some(((*pw).pw_uid, (*pw).pw_gid, PathBuf::from(home)))
    }
}
