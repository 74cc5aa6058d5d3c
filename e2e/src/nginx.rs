//! A real nginx in front of a test's in-process edges, so that every feature test goes through
//! the same proxy hop as production: the WebSocket upgrade headers, `X-Forwarded-For`, request
//! bodies and frames pass through nginx.
//!
//! Each test app gets two instances. Instance `i` sends everything to edge `i` and uses the other
//! edge only as a backup, so a test still decides which edge a client sits on (through the
//! nginx it picks), as in `./sb up`'s own nginx where the balancer decides. The proxy settings
//! are those of `tools/sb/nginx.py`; the instance runs as a single process
//! (`master_process off`) so that killing it leaves nothing behind.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One running nginx; stopped and its directory removed on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nginx executable: `SB_NGINX`, else the first `nginx` on `PATH` or in the sbin folders.
fn executable() -> PathBuf {
    if let Some(p) = std::env::var_os("SB_NGINX") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx not found (./sb up installs it)")
}

fn config(listen: SocketAddr, primary: SocketAddr, backup: SocketAddr) -> String {
    format!(
        r#"daemon off;
master_process off;
pid nginx.pid;
error_log logs/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    access_log off;
    # as tools/sb/nginx.py: slow and idle clients are bounded here first
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 30s;
    keepalive_timeout 65s;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream edges {{
        server {primary} max_fails=1 fail_timeout=2s;
        server {backup} backup;
    }}

    server {{
        listen {listen};

        # as tools/sb/nginx.py: the edges' 64 KiB body limit, answered with the edge's error body
        client_max_body_size 64k;
        error_page 413 = @payload_too_large;
        location @payload_too_large {{
            default_type application/json;
            return 413 '{{"code":"payload_too_large","message":"body is larger than the limit"}}';
        }}

        location / {{
            proxy_pass http://edges;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout http_502;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#
    )
}

fn try_start(dir: &Path, primary: SocketAddr, backup: SocketAddr) -> Option<Nginx> {
    let addr = crate::free_addr();
    for sub in ["conf", "logs", "temp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("nginx directories");
    }
    std::fs::write(dir.join("conf/nginx.conf"), config(addr, primary, backup))
        .expect("nginx config");
    let mut prefix = dir.as_os_str().to_owned();
    prefix.push("/");
    let child = Command::new(executable())
        .arg("-p")
        .arg(prefix)
        .args(["-c", "conf/nginx.conf", "-e", "logs/error.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx {
        addr,
        child,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Some(nginx);
        }
        if nginx.child.try_wait().ok().flatten().is_some() {
            // the port was taken between picking and binding: keep the directory, try again
            nginx.dir = PathBuf::new();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Start an nginx that proxies to `primary`, and to `backup` only while `primary` is down.
pub fn start(name: &str, primary: SocketAddr, backup: SocketAddr) -> Nginx {
    let dir = std::env::temp_dir().join(format!("switchboard-e2e-{name}"));
    for _ in 0..5 {
        if let Some(n) = try_start(&dir, primary, backup) {
            return n;
        }
    }
    let log = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
    panic!("nginx for {name} did not start; error log:\n{log}");
}
