//! What the lab benches share: the CRR load and the priority they run at, and the flood
//! generator (`flood`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dataplane_core::Backend;
use dataplane_testkit::{Family, Lab, NetNs};

/// Not every bench floods.
#[allow(dead_code)]
pub mod flood;

/// Client threads of a CRR load.
const THREADS: usize = 2;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One connect / request line / answer line / close, ended with RST (no `TIME_WAIT` piling
/// up over the rounds).
fn one_crr(dst: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"r\n")?;
    let mut buf = [0u8; 128];
    let mut n = 0;
    while !buf[..n].ends_with(b"\n") {
        let m = s.read(&mut buf[n..])?;
        if m == 0 || n + m == buf.len() {
            return Err(io::Error::other("no answer line"));
        }
        n += m;
    }
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    Ok(())
}

/// Connections per second from namespace `client` to `dst` over `duration` (2 threads),
/// and the failed ones.
pub fn crr(client: &NetNs, dst: SocketAddr, duration: Duration) -> (f64, u64) {
    let (ok, failed) = client
        .run(|| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            let (mut ok, mut failed) = (0u64, 0u64);
                            let start = Instant::now();
                            while start.elapsed() < duration {
                                match one_crr(dst) {
                                    Ok(()) => ok += 1,
                                    Err(_) => failed += 1,
                                }
                            }
                            (ok, failed)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("client thread"))
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            })
        })
        .expect("enter the client's namespace");
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (ok as f64 / duration.as_secs_f64(), failed)
}

/// Runs this process's main thread, and so every thread it starts after this (the lab's
/// servers are threads of the bench), at nice -20. The machine is shared: at -20 the
/// bench's threads outweigh other work (CFS weights 88761 vs 1024) in both settings of a
/// round alike, so that the others' load does not decide the ratio. (`renice -p` of the
/// process id changes the main thread only.)
pub fn renice() {
    let reniced = std::process::Command::new("renice")
        .args(["-n", "-20", "-p", &std::process::id().to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    if !reniced {
        eprintln!("could not raise the priority (renice): the others' load counts too");
    }
}

/// The IPv4 backends of node 0's pods `names`.
pub fn node0_backends(lab: &Lab, names: &[&str]) -> Vec<Backend> {
    names
        .iter()
        .map(|p| {
            let pod = lab.pod_by_name(p).expect("backend pod");
            let mut b = Backend::new(pod.address(Family::V4).expect("IPv4"));
            b.node_name = Some(lab.node(0).name.as_str().into());
            b
        })
        .collect()
}
