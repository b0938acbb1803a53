//! Raw Ethernet frames in the lab: written onto a pod's `eth0` exactly as given (an
//! `AF_PACKET` socket in the pod's network namespace, so the real veth and both of Ward's
//! programs see them as the pod's own traffic), and watched for on another pod's `eth0`.
//! This is how the crafted-packet tests observe what the real datapath lets through.

use std::time::{Duration, Instant};

use crate::netns::{NetNs, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} in {netns}: {source}")]
    Socket { netns: String, what: &'static str, source: std::io::Error },
    #[error("reading {what} in {netns}: {detail}")]
    Read { netns: String, what: &'static str, detail: String },
}

const ETH_P_ALL: u16 = 0x0003;
const IFNAME: &str = "eth0";

/// The MAC of `eth0` in `netns`, and that of the neighbour its default route points at (the
/// node side of the veth, a static entry).
pub fn macs(netns: &NetNs) -> Result<([u8; 6], [u8; 6]), RawError> {
    let own = netns.ip(&["-o", "link", "show", IFNAME])?;
    let own = mac_after(&own, "link/ether").ok_or_else(|| RawError::Read {
        netns: netns.name().into(),
        what: "eth0's address",
        detail: own.clone(),
    })?;
    let neigh = netns.ip(&["neigh", "show", "dev", IFNAME])?;
    let gw = mac_after(&neigh, "lladdr").ok_or_else(|| RawError::Read {
        netns: netns.name().into(),
        what: "the gateway's neighbour entry",
        detail: neigh.clone(),
    })?;
    Ok((own, gw))
}

fn mac_after(text: &str, word: &str) -> Option<[u8; 6]> {
    let mut it = text.split_whitespace().skip_while(|w| *w != word);
    it.next()?;
    let mut mac = [0u8; 6];
    let parts: Vec<u8> = it.next()?.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    if parts.len() != 6 {
        return None;
    }
    mac.copy_from_slice(&parts);
    Some(mac)
}

fn packet_socket(netns: &NetNs) -> Result<std::os::fd::OwnedFd, RawError> {
    use std::os::fd::FromRawFd as _;
    let err = |what| move |source| RawError::Socket { netns: netns.name().into(), what, source };
    let index = nix::net::if_::if_nametoindex(IFNAME).map_err(|e| err("looking up eth0")(e.into()))?;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
    if fd < 0 {
        return Err(err("opening a packet socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed then filled.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: binding the descriptor we own to a correctly sized address.
    let r = unsafe {
        use std::os::fd::AsRawFd as _;
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(err("binding the packet socket")(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Writes `frame` (a whole Ethernet frame) onto `eth0` in `netns`.
pub fn send(netns: &NetNs, frame: &[u8]) -> Result<(), RawError> {
    netns.run_in(|| {
        let fd = packet_socket(netns)?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: writing a buffer we own to a descriptor we own.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(RawError::Socket {
                netns: netns.name().into(),
                what: "sending a frame",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    })?
}

/// Listens on `eth0` in `netns` while `during` runs (in this thread) and for `wait` after it
/// returns, and says whether a frame containing `marker` arrived.
pub fn arrives<T>(
    netns: &NetNs,
    marker: &[u8],
    wait: Duration,
    during: impl FnOnce() -> T,
) -> Result<(bool, T), RawError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let listener = s.spawn(|| -> Result<bool, RawError> {
            netns.run_in(|| {
                let fd = packet_socket(netns)?;
                use std::os::fd::AsRawFd as _;
                let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
                // SAFETY: setting a receive timeout on a descriptor we own.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&tv as *const libc::timeval).cast(),
                        std::mem::size_of::<libc::timeval>() as u32,
                    )
                };
                let _ = ready_tx.send(());
                // Bounded: `during` gets at most a minute, then `wait`.
                let give_up = Instant::now() + Duration::from_secs(60) + wait;
                let mut stop_at: Option<Instant> = None;
                let mut buf = vec![0u8; 65536];
                loop {
                    // SAFETY: reading into a buffer we own.
                    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if n > 0 && buf[..n as usize].windows(marker.len()).any(|w| w == marker) {
                        return Ok(true);
                    }
                    let now = Instant::now();
                    if stop_at.is_none() && done.load(Ordering::SeqCst) {
                        stop_at = Some(now + wait);
                    }
                    if now > give_up || stop_at.is_some_and(|t| now > t) {
                        return Ok(false);
                    }
                }
            })?
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let out = during();
        done.store(true, Ordering::SeqCst);
        let seen = listener.join().map_err(|_| RawError::Read {
            netns: netns.name().into(),
            what: "frames",
            detail: "the listener panicked".into(),
        })??;
        Ok((seen, out))
    })
}
