//! The two bpf(2) commands aya 0.14 does not expose for cgroup links: open a pinned link as a plain
//! fd, and `BPF_LINK_UPDATE` (swap the program of a live link atomically: no packet or connect
//! sees no program in between). aya uses `bpf_link_update` internally for XDP and tcx only.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn sys_bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points to `size` initialised bytes laid out as the command's bpf_attr member.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Open the bpffs object (here: a link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // obj: pathname u64, bpf_fd u32, file_flags u32, path_fd i32
    #[repr(C, align(8))]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut a = Attr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    let fd = sys_bpf(BPF_OBJ_GET, (&raw mut a).cast(), size_of::<Attr>())?;
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// (link id, program id) of a link.
pub fn link_ids(link: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // The leading fields of struct bpf_link_info: type u32, id u32, prog_id u32, then a union.
    #[repr(C, align(8))]
    struct Info {
        type_: u32,
        id: u32,
        prog_id: u32,
        _rest: [u32; 29],
    }
    let mut info = Info { type_: 0, id: 0, prog_id: 0, _rest: [0; 29] };
    #[repr(C, align(8))]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut a =
        Attr { bpf_fd: link.as_raw_fd() as u32, info_len: size_of::<Info>() as u32, info: (&raw mut info) as u64 };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, (&raw mut a).cast(), size_of::<Attr>())?;
    Ok((info.id, info.prog_id))
}

/// Replace the program of `link` with `prog`, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: impl AsFd) -> io::Result<()> {
    // link_update: link_fd u32, new_prog_fd u32, flags u32, old_prog_fd u32
    let mut a: [u32; 4] = [link.as_raw_fd() as u32, prog.as_fd().as_raw_fd() as u32, 0, 0];
    sys_bpf(BPF_LINK_UPDATE, a.as_mut_ptr().cast(), size_of_val(&a)).map(drop)
}
