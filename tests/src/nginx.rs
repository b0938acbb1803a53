//! A real nginx (Debian's) inside a pod's network namespace, answering every method and
//! path with `200`, keep-alive on, with its access log kept so a test can show which
//! requests the server actually received. Stopped (and its files removed) on drop.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::labdir::LabDir;
use crate::netns::NetNs;

/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("nginx in {netns}: {what}: {source}")]
    Io { netns: String, what: &'static str, source: std::io::Error },
    #[error("nginx in {netns} did not listen on port {port} within {START_TIMEOUT:?}; its error log:\n{log}")]
    NotListening { netns: String, port: u16, log: String },
}

/// A running nginx; see the module docs.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: LabDir,
    pub port: u16,
}

fn config(dir: &std::path::Path, port: u16, workers: u32) -> String {
    let d = dir.display();
    format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         keepalive_requests 1000000;\n  keepalive_timeout 120s;\n  \
         server {{\n    listen {port} reuseport;\n    listen [::]:{port} reuseport;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

impl Nginx {
    /// Starts nginx on `port` in `netns` and waits until it accepts connections.
    pub fn start(netns: &NetNs, port: u16) -> Result<Nginx, NginxError> {
        Self::start_with(netns, port, 1, true)
    }

    /// As [`Nginx::start`], with `workers` worker processes and the access log on or off
    /// (off for benchmarks: logging is not what they measure).
    pub fn start_with(netns: &NetNs, port: u16, workers: u32, access_log: bool) -> Result<Nginx, NginxError> {
        let io = |what, source| NginxError::Io { netns: netns.name().to_owned(), what, source };
        let dir = LabDir::create("nginx").map_err(|e| io("creating its directory", e))?;
        let mut conf = config(dir.path(), port, workers);
        if !access_log {
            conf = conf.replace(&format!("access_log {}/access.log;", dir.path().display()), "access_log off;");
        }
        std::fs::write(dir.path().join("nginx.conf"), conf).map_err(|e| io("writing nginx.conf", e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "nginx", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io("starting nginx (is nginx-light installed? cargo xtask setup)", e))?;
        let nginx = Nginx { child, dir, port };
        let deadline = Instant::now() + START_TIMEOUT;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            let up = netns.run_in(|| TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok());
            if matches!(up, Ok(true)) {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                return Err(NginxError::NotListening { netns: netns.name().to_owned(), port, log: nginx.error_log() });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request nginx received so far, one line each (combined log format).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `ip netns exec` execs nginx, so this is the master: SIGQUIT would drain, SIGTERM
        // stops it at once (its workers follow).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}
