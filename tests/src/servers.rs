//! Listener processes inside a test netns (killed on drop), and the Python servers they run
//! (tests/helpers/server.py, https_server.py, udp_blackhole.py, silent_listener.py).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use crate::{Netns, Pki, python};

/// The server script, tests/helpers/server.py: each argument is `tcp:PORT` or `udp:PORT`, bound
/// dual-stack on `::` (so every address of the namespace answers). TCP answers one HTTP/1.0
/// response whose body is `hello from ADDR:PORT` (the local address that was reached); UDP echoes
/// `echo ADDR:PORT`. Prints `ready` once everything is bound.
pub const SERVER_PY: &str = include_str!("../helpers/server.py");

/// An HTTP/1.1 server, tests/helpers/https_server.py (keep-alive, threads). Arguments: `ADDR PORT
/// CERT KEY` (TLS) or `ADDR PORT plain`. Paths:
/// - `/status/N`: status N, body `status N\n`;
/// - `/bytes/N`: 200 with exactly N bytes (Content-Length), generated and written in 64 KiB
///   chunks (never held in memory whole);
/// - anything else: 200, body `hello path=P host=H sni=S peer=ADDR:PORT\n` (S: the ClientHello's
///   server_name as the server saw it, `-` for none or plain; ADDR:PORT: the client as seen
///   by the server).
///
/// The TLS handshake runs in the connection's thread (a silent client never blocks accepts).
/// Prints `ready` once listening.
pub const HTTPS_SERVER_PY: &str = include_str!("../helpers/https_server.py");

/// tests/helpers/udp_blackhole.py: reads UDP datagrams on `ADDR PORT`, never answers.
pub const UDP_BLACKHOLE_PY: &str = include_str!("../helpers/udp_blackhole.py");

/// tests/helpers/silent_listener.py: accepts TCP on `ADDR PORT`, never sends a byte.
pub const SILENT_LISTENER_PY: &str = include_str!("../helpers/silent_listener.py");

/// A listener process; killed (and reaped) on drop.
pub struct Server {
    child: Child,
}

impl Server {
    /// Start `cmd` and wait (≤ 15 s) for it to print `ready` on stdout.
    pub fn start(mut cmd: Command, what: &str) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut srv = Self { child };
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.trim() == "ready" => srv,
            Ok(l) => {
                let st = srv.child.try_wait().ok().flatten();
                panic!("{what} did not start (printed {l:?}, status {st:?})")
            }
            Err(_) => panic!("{what} did not print `ready` within 15 s"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP "resolver" in a netns that reads queries and never answers (an upstream that times
/// out). Killed on drop.
pub fn udp_blackhole(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(UDP_BLACKHOLE_PY).arg(addr).arg(port.to_string());
    Server::start(c, &format!("udp blackhole {addr}:{port} in netns {}", ns.name))
}

/// [`HTTPS_SERVER_PY`] with TLS (`pki`'s server certificate) on `addr:port` in `ns`.
pub fn https_server(ns: &Netns, addr: &str, port: u16, pki: &Pki) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(HTTPS_SERVER_PY).arg(addr).arg(port.to_string()).arg(&pki.cert).arg(&pki.key);
    Server::start(c, &format!("https server {addr}:{port} in netns {}", ns.name))
}

/// [`HTTPS_SERVER_PY`] without TLS on `addr:port` in `ns`.
pub fn plain_http_server(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(HTTPS_SERVER_PY).arg(addr).arg(port.to_string()).arg("plain");
    Server::start(c, &format!("http server {addr}:{port} in netns {}", ns.name))
}

/// A TCP listener on `addr:port` in `ns` that accepts and never sends a byte (a TLS handshake
/// to it hangs until the client gives up). Prints `ready`.
pub fn silent_listener(ns: &Netns, addr: &str, port: u16) -> Server {
    let mut c = ns.command(python());
    c.arg("-c").arg(SILENT_LISTENER_PY).arg(addr).arg(port.to_string());
    Server::start(c, &format!("silent listener {addr}:{port} in netns {}", ns.name))
}
