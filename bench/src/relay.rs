//! The floor: a bare byte relay (no HTTP, no runtime), one blocking thread per direction
//! per connection, as a separate process like every subject. What one extra hop of the
//! kernel's sockets and two process wake-ups cost on this machine, and nothing else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The read half, the write half, and a handle to half-close the write side.
type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>, Conn);

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(to: &str) -> std::io::Result<Self> {
        match to.parse::<std::net::SocketAddr>() {
            Ok(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Err(_) => Ok(Conn::Unix(UnixStream::connect(to)?)),
        }
    }
    fn split(&self) -> std::io::Result<Halves> {
        Ok(match self {
            Conn::Tcp(s) => {
                (Box::new(s.try_clone()?), Box::new(s.try_clone()?), Conn::Tcp(s.try_clone()?))
            }
            Conn::Unix(s) => {
                (Box::new(s.try_clone()?), Box::new(s.try_clone()?), Conn::Unix(s.try_clone()?))
            }
        })
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

fn pump(mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>, end: Conn) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    end.shutdown_write();
}

fn relay(client: Conn, to: &str) {
    let Ok(upstream) = Conn::connect(to) else { return };
    let (Ok((cr, cw, cend)), Ok((ur, uw, uend))) = (client.split(), upstream.split()) else {
        return;
    };
    std::thread::spawn(move || pump(cr, uw, uend));
    std::thread::spawn(move || pump(ur, cw, cend));
}

/// Listens on `listen` (`127.0.0.1:PORT` or a socket path) and relays every connection to
/// `to`, until killed.
pub fn run(listen: &str, to: &str) -> anyhow::Result<()> {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        let l = TcpListener::bind(addr)?;
        for c in l.incoming().flatten() {
            let _ = c.set_nodelay(true);
            relay(Conn::Tcp(c), to);
        }
    } else {
        let _ = std::fs::remove_file(listen);
        let l = UnixListener::bind(Path::new(listen))?;
        for c in l.incoming().flatten() {
            relay(Conn::Unix(c), to);
        }
    }
    Ok(())
}
