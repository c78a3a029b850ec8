//! A small blocking NETLINK_ROUTE socket: one request at a time, sequence numbers checked,
//! ACK/NACK decoded to errno (with the kernel's extended-ack text when it gives one), dumps
//! collected until NLMSG_DONE and retried when the kernel flags them inconsistent.

use crate::err;
use crate::error::{Error, Kind, Result};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::fmt;
use std::time::Duration;

/// Initial receive buffer; grown on demand when the kernel sends a bigger datagram.
const RECV_BUF: usize = 64 * 1024;
/// A dump flagged NLM_F_DUMP_INTR (table changed under it) is retried this many times.
const DUMP_RETRIES: usize = 5;
/// The kernel always answers; this only bounds the damage of a bug.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A failed exchange: the kernel's errno (positive) plus its extended-ack text, or a local error.
#[derive(Debug)]
pub(crate) enum NlError {
    Errno { code: i32, ext: Option<String> },
    Local(Error),
}

impl NlError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Errno { code, .. } => Some(*code),
            NlError::Local(_) => None,
        }
    }

    /// Turns this into the crate error, prefixed with what was being done.
    pub(crate) fn into_error(self, op: impl fmt::Display) -> Error {
        match self {
            NlError::Errno { code, ext } => {
                let io = std::io::Error::from_raw_os_error(code);
                match ext {
                    Some(ext) => err!(Kind::Datapath, "{op}: {io}; kernel says: {ext}"),
                    None => err!(Kind::Datapath, "{op}: {io}"),
                }
            }
            NlError::Local(e) => e.context(op),
        }
    }
}

impl From<Error> for NlError {
    fn from(e: Error) -> NlError {
        NlError::Local(e)
    }
}

pub(crate) struct NlSocket {
    sock: Socket,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn new() -> Result<NlSocket> {
        let io =
            |what: &str, e: std::io::Error| err!(Kind::Datapath, "netlink socket: {what}: {e}");
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| io("create", e))?;
        let addr = sock.bind_auto().map_err(|e| io("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io("connect", e))?;
        // Without the request echoed back in errors; with the kernel's error text. Both are
        // niceties: old kernels without them still work.
        if let Err(e) = sock.set_cap_ack(true) {
            log::debug!("netlink: NETLINK_CAP_ACK unsupported: {e}");
        }
        if let Err(e) = sock.set_ext_ack(true) {
            log::debug!("netlink: NETLINK_EXT_ACK unsupported: {e}");
        }
        let tv = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| io("SO_RCVTIMEO", e.into()))?;
        Ok(NlSocket {
            sock,
            port: addr.port_number(),
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends a request with NLM_F_ACK and returns the messages the kernel sent before its ACK.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, NlError> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        Ok(self.collect(seq, false)?.0)
    }

    /// Dumps a table; retried when the kernel reports the dump was interrupted by a change.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, NlError> {
        for _ in 0..DUMP_RETRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let (msgs, interrupted) = self.collect(seq, true)?;
            if !interrupted {
                return Ok(msgs);
            }
            log::debug!("netlink dump interrupted by a concurrent change, retrying");
        }
        Err(err!(
            Kind::Datapath,
            "netlink dump kept being interrupted by concurrent changes ({DUMP_RETRIES} tries)"
        )
        .into())
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        loop {
            match self.sock.send(&out, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err!(Kind::Datapath, "netlink send: {e}")),
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing the buffer if the datagram is bigger.
    fn recv(&mut self) -> Result<()> {
        loop {
            self.buf.clear();
            let peek = self
                .sock
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC);
            match peek {
                Ok(n) if n > self.buf.capacity() => {
                    self.buf.reserve(n);
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(recv_error(e)),
            }
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(recv_error(e)),
            }
        }
    }

    /// Reads replies to `seq` until the ACK (or DONE for a dump). Returns the inner messages and
    /// whether any of them carried NLM_F_DUMP_INTR.
    fn collect(
        &mut self,
        seq: u32,
        dump: bool,
    ) -> std::result::Result<(Vec<RouteNetlinkMessage>, bool), NlError> {
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv()?;
            let mut off = 0;
            while off < self.buf.len() {
                let rest = &self.buf[off..];
                let nl = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| err!(Kind::Datapath, "malformed netlink reply: {e}"))?;
                let len = nl.length() as usize;
                let (mseq, port, flags, ty) = (
                    nl.sequence_number(),
                    nl.port_number(),
                    nl.flags(),
                    nl.message_type(),
                );
                let raw = &rest[..len];
                off += align4(len);
                if mseq != seq || (port != 0 && port != self.port) {
                    // A late reply to an earlier, abandoned request: not ours.
                    log::debug!("netlink: skipping message seq {mseq} (want {seq})");
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                if ty == NLMSG_NOOP {
                    continue;
                }
                if ty == NLMSG_OVERRUN {
                    return Err(err!(Kind::Datapath, "netlink: overrun, data lost").into());
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw);
                let msg = match parsed {
                    Ok(m) => m,
                    Err(e) if ty != NLMSG_ERROR && ty != NLMSG_DONE => {
                        // One odd object must not make the whole answer unusable.
                        log::warn!("netlink: skipping undecodable message type {ty}: {e}");
                        continue;
                    }
                    Err(e) => {
                        return Err(err!(Kind::Datapath, "malformed netlink reply: {e}").into());
                    }
                };
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok((out, interrupted)),
                        None => continue,
                        Some(code) => {
                            return Err(NlError::Errno {
                                code: errno_of(code.get()),
                                ext: ext_ack_msg(flags, &e.header),
                            });
                        }
                    },
                    NetlinkPayload::Done(d) => {
                        if d.code != 0 {
                            return Err(NlError::Errno {
                                code: errno_of(d.code),
                                ext: None,
                            });
                        }
                        return Ok((out, interrupted));
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

fn recv_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        err!(
            Kind::Datapath,
            "netlink: no reply from the kernel within {RECV_TIMEOUT:?}"
        )
    } else {
        err!(Kind::Datapath, "netlink recv: {e}")
    }
}

/// The kernel sends negative errnos; a nonsensical i32::MIN must not overflow.
fn errno_of(code: i32) -> i32 {
    code.checked_abs().unwrap_or(libc::EIO)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Extracts NLMSGERR_ATTR_MSG from an error payload (after the errno): the original header (and
/// request, unless capped) followed by TLVs when NLM_F_ACK_TLVS is set.
fn ext_ack_msg(flags: u16, rest: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || rest.len() < 16 {
        return None;
    }
    let orig_len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
    let mut off = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        align4(orig_len)
    };
    while off + 4 <= rest.len() {
        let len = u16::from_ne_bytes([rest[off], rest[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([rest[off + 2], rest[off + 3]]) & 0x3fff;
        if len < 4 || off + len > rest.len() {
            return None;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let v = &rest[off + 4..off + len];
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            let s = String::from_utf8_lossy(&v[..end]).trim().to_string();
            return (!s.is_empty()).then_some(s);
        }
        off += align4(len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(val);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn ext_ack_text_is_extracted() {
        let mut rest = vec![0u8; 16];
        rest[0..4].copy_from_slice(&40u32.to_ne_bytes());
        rest.extend(tlv(4, &[1, 2, 3, 4]));
        rest.extend(tlv(NLMSGERR_ATTR_MSG, b"Nexthop device is not up\0"));
        let msg = ext_ack_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, &rest);
        assert_eq!(msg.as_deref(), Some("Nexthop device is not up"));
        assert_eq!(ext_ack_msg(NLM_F_CAPPED, &rest), None);
        // Garbage never panics.
        assert_eq!(ext_ack_msg(NLM_F_ACK_TLVS, &[0xff; 20]), None);
        assert_eq!(
            ext_ack_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, &[0xff; 23]),
            None
        );
    }

    #[test]
    fn errno_errors_read_like_the_os() {
        let e = NlError::Errno {
            code: libc::EEXIST,
            ext: None,
        }
        .into_error("add route 10.0.0.5/32 dev tw1234");
        assert_eq!(e.kind, Kind::Datapath);
        assert_eq!(
            e.msg,
            "add route 10.0.0.5/32 dev tw1234: File exists (os error 17)"
        );
    }
}
