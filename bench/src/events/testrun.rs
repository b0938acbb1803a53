//! Events at kernel speed: one crafted frame run through the agent's own loaded `from_pod`
//! program with `BPF_PROG_TEST_RUN` and a repeat count, as if the pod had sent it `repeat`
//! times on its veth. The program is found through the node's pinned TCX link of that veth
//! (`<pin_dir>/links/<ifindex>-from`), so it is exactly what enforces the pod, with the
//! agent's maps; another Ward node on the machine never mixes in.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, bail};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Size of the kernel's `struct __sk_buff` (uapi, fixed); `ifindex` is the u32 at byte 40.
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_IFINDEX: usize = 40;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: `attr` is an initialised bpf_attr of the size passed; the pointers inside it
    // (set by the callers) point at buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A program opened by its pinned link.
pub struct Program {
    fd: OwnedFd,
    pub id: u32,
}

impl Program {
    /// The program inside the TCX link pinned at `link_pin`.
    pub fn from_link_pin(link_pin: &Path) -> anyhow::Result<Program> {
        let path = CString::new(link_pin.as_os_str().as_encoded_bytes()).context("a pin path with a NUL")?;
        // BPF_OBJ_GET: { u64 pathname; u32 bpf_fd; u32 file_flags; }
        let mut attr = [0u8; 16];
        put_u64(&mut attr, 0, path.as_ptr() as u64);
        let link = owned(bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", link_pin.display()))?);
        // struct bpf_link_info starts { u32 type; u32 id; u32 prog_id; ... }.
        let mut info = [0u8; 128];
        let mut attr = [0u8; 16];
        put_u32(&mut attr, 0, link.as_raw_fd() as u32);
        put_u32(&mut attr, 4, info.len() as u32);
        put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the link's info")?;
        let id = u32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
        if id == 0 {
            bail!("the link pinned at {} holds no program", link_pin.display());
        }
        let mut attr = [0u8; 12];
        put_u32(&mut attr, 0, id);
        let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).with_context(|| format!("opening program {id}"))?);
        Ok(Program { fd, id })
    }

    /// Runs `frame` `repeat` times as if it arrived on `ifindex` (which must exist in the
    /// calling thread's network namespace). Returns the program's verdict.
    pub fn run(&self, frame: &[u8], ifindex: u32, repeat: u32) -> std::io::Result<i32> {
        let mut ctx = [0u8; SK_BUFF_SIZE];
        ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        // BPF_PROG_TEST_RUN: { u32 prog_fd; u32 retval; u32 data_size_in; u32 data_size_out;
        // u64 data_in; u64 data_out; u32 repeat; u32 duration; u32 ctx_size_in;
        // u32 ctx_size_out; u64 ctx_in; u64 ctx_out; u32 flags; u32 cpu; u32 batch_size; }
        let mut attr = [0u8; 80];
        put_u32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put_u32(&mut attr, 8, frame.len() as u32);
        put_u64(&mut attr, 16, frame.as_ptr() as u64);
        put_u32(&mut attr, 32, repeat);
        put_u32(&mut attr, 40, ctx.len() as u32);
        put_u64(&mut attr, 48, ctx.as_ptr() as u64);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(i32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]))
    }
}

/// An Ethernet frame with an IPv4 TCP SYN from `src:sport` to `dst:dport` (checksums zero:
/// the programs do not check them).
pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total: u16 = 20 + 20;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syn_frame_has_its_addresses_ports_and_flag_where_parsers_look() {
        let f = tcp_syn(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 5432);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14] >> 4, 4);
        assert_eq!(f[14 + 9], 6, "TCP");
        assert_eq!(&f[26..30], &[10, 0, 0, 1]);
        assert_eq!(&f[30..34], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40000);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5432);
        assert_eq!(f[34 + 13], 0x02, "SYN only");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14, "IP total length");
    }
}
