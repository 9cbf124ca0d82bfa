//! A raw HTTP/2 client over TLS: frames written byte by byte (what a
//! well-behaved client library never sends: floods of resets, header
//! blocks that never end, half a frame header) and frames read back as
//! they come. Header blocks use HPACK literals without indexing, so no
//! encoder state is needed; responses are judged by frame kind, flags,
//! stream and the (uncompressed) DATA they carry.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{DELETE, Running, World, campaign_id, client_config, delete_body, tls_connect};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// GOAWAY's (last stream id, error code).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            let p = &self.payload;
            (
                u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]),
                u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            )
        })
    }

    /// RST_STREAM's error code.
    pub fn reset_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| {
            u32::from_be_bytes([
                self.payload[0],
                self.payload[1],
                self.payload[2],
                self.payload[3],
            ])
        })
    }

    /// A SETTINGS parameter's value.
    pub fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|c| {
            (u16::from_be_bytes([c[0], c[1]]) == id)
                .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        })
    }
}

#[derive(Debug)]
pub enum Read {
    Frame(RawFrame),
    /// The gateway closed the connection (EOF or reset).
    Closed,
    TimedOut,
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literals without indexing, new names, no Huffman.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A delete's request headers; `token` None sends none.
pub fn delete_headers(port: u16, token: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_string(), "POST".to_string()),
        (":scheme".into(), "https".into()),
        (":authority".into(), format!("127.0.0.1:{port}")),
        (":path".into(), DELETE.into()),
        ("content-type".into(), "application/json".into()),
    ];
    if let Some(t) = token {
        h.push(("authorization".into(), format!("Bearer {t}")));
    }
    h
}

pub fn block_of(h: &[(String, String)]) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    header_block(&pairs)
}

pub struct H2Raw {
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
    /// Every frame read so far.
    pub seen: Vec<RawFrame>,
}

impl H2Raw {
    /// TLS with ALPN h2 to the gateway, then only the connection preface
    /// (send SETTINGS yourself, or call [`H2Raw::start`]).
    pub async fn connect_bare(w: &World, gw: &Running) -> H2Raw {
        let io = tls_connect(gw.addr, client_config(&w.ca.pem, None, &[b"h2"]))
            .await
            .unwrap();
        assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut c = H2Raw {
            io,
            buf: Vec::new(),
            seen: Vec::new(),
        };
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        c
    }

    /// Preface and an empty SETTINGS: a connection ready for streams.
    pub async fn start(w: &World, gw: &Running) -> H2Raw {
        let mut c = H2Raw::connect_bare(w, gw).await;
        c.send(&frame(SETTINGS, 0, 0, &[])).await;
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// Sends; false once the gateway has closed the connection.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// The next frame within `wait`. The gateway's SETTINGS are ACKed.
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let n = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + n {
                    let f = RawFrame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5] & 0x7f,
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]),
                        payload: self.buf[9..9 + n].to_vec(),
                    };
                    self.buf.drain(..9 + n);
                    if f.kind == SETTINGS && f.flags & ACK == 0 {
                        self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    self.seen.push(f.clone());
                    return Read::Frame(f);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `want` matches a frame (returned), the connection
    /// closes or `wait` passes (None).
    pub async fn until(
        &mut self,
        wait: Duration,
        mut want: impl FnMut(&RawFrame) -> bool,
    ) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Frame(f) if want(&f) => return Some(f),
                Read::Frame(_) => {}
                Read::Closed | Read::TimedOut => return None,
            }
        }
    }

    /// True when the gateway closes the connection within `wait`
    /// (frames before that are read and kept in `seen`).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Frame(_) => {}
                Read::Closed => return true,
                Read::TimedOut => return false,
            }
        }
    }

    /// A delete of a new campaign on `stream` (its DATA after `pause`,
    /// `extra` headers after the delete's own); true when the answer ends
    /// within 5 s.
    pub async fn delete(
        &mut self,
        port: u16,
        stream: u32,
        token: &str,
        pause: Duration,
        extra: &[(String, String)],
    ) -> bool {
        let mut h = delete_headers(port, Some(token));
        let body = delete_body(&campaign_id());
        h.push(("content-length".into(), body.len().to_string()));
        h.extend_from_slice(extra);
        self.send(&frame(HEADERS, END_HEADERS, stream, &block_of(&h)))
            .await;
        tokio::time::sleep(pause).await;
        self.send(&frame(DATA, END_STREAM, stream, &body)).await;
        self.until(Duration::from_secs(5), |f| {
            f.stream == stream && f.flags & END_STREAM != 0
        })
        .await
        .is_some()
    }

    /// The DATA this connection received on `stream`, as text.
    pub fn data_text(&self, stream: u32) -> String {
        let bytes: Vec<u8> = self
            .seen
            .iter()
            .filter(|f| f.kind == DATA && f.stream == stream)
            .flat_map(|f| f.payload.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.seen.iter().find_map(RawFrame::goaway)
    }
}
