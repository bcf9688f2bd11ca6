//! Tests of `api::rawtarget`: request-line rewriting and the AsyncRead wrapper.
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `input` through the state machine in chunks of `chunk` bytes.
fn run(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut framing = Framing::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        framing.feed(piece, &mut out);
    }
    framing.finish(&mut out);
    out
}

/// A reader handing out one byte per read, returning `Pending` (and waking) in between.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    pending_next: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending_next {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        if self.pos < self.data.len() {
            let b = self.data[self.pos];
            buf.put_slice(&[b]);
            self.pos += 1;
        }
        Poll::Ready(Ok(()))
    }
}

async fn read_all<R: AsyncRead + Unpin>(reader: R) -> Vec<u8> {
    let mut io = RawTargetIo::new(reader);
    let mut got = Vec::new();
    io.read_to_end(&mut got).await.unwrap();
    got
}

#[test]
fn gpg_search_pattern_is_encoded() {
    let line =
        b"GET /pks/lookup?op=index&options=mr&search=Jane%20<jane+x@example.org> HTTP/1.0\r\n";
    assert_eq!(
        rewrite_request_line(line),
        b"GET /pks/lookup?op=index&options=mr&search=Jane%20%3Cjane+x@example.org%3E HTTP/1.0\r\n"
            .to_vec()
    );
}

#[test]
fn hash_is_encoded_not_a_fragment() {
    assert_eq!(
        rewrite_request_line(b"GET /pks/lookup?op=get&search=a#b HTTP/1.1\r\n"),
        b"GET /pks/lookup?op=get&search=a%23b HTTP/1.1\r\n".to_vec()
    );
}

#[test]
fn multibyte_utf8_is_encoded_bytewise() {
    let line = "GET /pks/lookup?search=J\u{fc}rgen\u{1F511} HTTP/1.0\n";
    assert_eq!(
        rewrite_request_line(line.as_bytes()),
        b"GET /pks/lookup?search=J%C3%BCrgen%F0%9F%94%91 HTTP/1.0\n".to_vec()
    );
}

#[test]
fn every_listed_byte_is_encoded() {
    assert_eq!(
        encode_target(b"/?q=\"{|}\\^`<>#\x01\x7f \t"),
        b"/?q=%22%7B%7C%7D%5C%5E%60%3C%3E%23%01%7F%20%09".to_vec()
    );
}

#[test]
fn already_encoded_input_is_unchanged() {
    let line =
        b"GET /pks/lookup?op=index&search=Jane%20%3Cjane%2Bx%40example.org%3E&x=a+b/c@d HTTP/1.1\r\n";
    assert_eq!(rewrite_request_line(line), line.to_vec());
    let odd = b"GET /a%zz%?[x]=~!$&'()*,;:= HTTP/1.1\r\n";
    assert_eq!(rewrite_request_line(odd), odd.to_vec());
}

#[test]
fn decoding_once_gives_back_the_original() {
    let original = "Jane <jane+x@example.org> #1 \u{e9}";
    let encoded = encode_target(original.as_bytes());
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = std::str::from_utf8(&encoded[i + 1..i + 3]).unwrap();
            decoded.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            decoded.push(encoded[i]);
            i += 1;
        }
    }
    assert_eq!(decoded, original.as_bytes());
}

#[test]
fn raw_space_inside_target_is_encoded() {
    assert_eq!(
        rewrite_request_line(b"GET /pks/lookup?search=a b HTTP/1.0\r\n"),
        b"GET /pks/lookup?search=a%20b HTTP/1.0\r\n".to_vec()
    );
}

#[test]
fn malformed_request_lines_are_unchanged() {
    for line in [
        &b"GET /<x>\r\n"[..],
        b"GET /<x> FTP/1.0\r\n",
        b" /<x> HTTP/1.0\r\n",
        b"GET  HTTP/1.0\r\n",
        b"garbage<>\n",
    ] {
        assert_eq!(rewrite_request_line(line), line.to_vec());
    }
}

#[test]
fn headers_are_not_rewritten() {
    let input = b"GET /a<b> HTTP/1.1\r\nHost: x\r\nX-Test: <kept> #raw\r\n\r\n";
    assert_eq!(
        run(input, 3),
        b"GET /a%3Cb%3E HTTP/1.1\r\nHost: x\r\nX-Test: <kept> #raw\r\n\r\n".to_vec()
    );
}

#[test]
fn keep_alive_requests_with_post_body_between() {
    let body = b"keytext=<not touched> #x";
    let input = [
        b"POST /pks/add?x=<1> HTTP/1.1\r\nHost: h\r\ncontent-length: ".to_vec(),
        body.len().to_string().into_bytes(),
        b"\r\n\r\n".to_vec(),
        body.to_vec(),
        b"GET /pks/lookup?search=<2> HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"GET /pks/lookup?search=#3 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
    ]
    .concat();
    let expected = [
        b"POST /pks/add?x=%3C1%3E HTTP/1.1\r\nHost: h\r\ncontent-length: ".to_vec(),
        body.len().to_string().into_bytes(),
        b"\r\n\r\n".to_vec(),
        body.to_vec(),
        b"GET /pks/lookup?search=%3C2%3E HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"GET /pks/lookup?search=%233 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
    ]
    .concat();
    for chunk in [1, 2, 7, 64, 4096] {
        assert_eq!(run(&input, chunk), expected, "chunk size {chunk}");
    }
}

#[test]
fn chunked_and_upgrade_pass_the_rest_through() {
    let chunked = b"POST /a<1> HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n<x>\r\n0\r\n\r\nGET /b<2> HTTP/1.1\r\n\r\n";
    let got = run(chunked, 5);
    assert!(got.starts_with(b"POST /a%3C1%3E HTTP/1.1\r\n"));
    assert!(got.ends_with(b"GET /b<2> HTTP/1.1\r\n\r\n"));
    let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /<x> HTTP/1.1\r\n\r\n";
    assert_eq!(run(upgrade, 4), upgrade.to_vec());
}

#[test]
fn bad_content_length_passes_the_rest_through() {
    for cl in ["+5", "5, 5", "", "-1", "99999999999999999999999"] {
        let input =
            format!("POST /<a> HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nGET /<b> HTTP/1.1\r\n\r\n");
        let got = run(input.as_bytes(), 3);
        assert!(got.ends_with(b"GET /<b> HTTP/1.1\r\n\r\n"), "{cl:?}");
    }
    let twice = b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nxGET /<b> HTTP/1.1\r\n\r\n";
    assert_eq!(run(twice, 2), twice.to_vec());
}

#[test]
fn overlong_line_passes_through_unchanged() {
    let mut input = b"GET /?q=<".to_vec();
    input.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
    input.extend_from_slice(b"> HTTP/1.1\r\n\r\nGET /<x> HTTP/1.1\r\n\r\n");
    assert_eq!(run(&input, 1000), input);
}

#[test]
fn leading_blank_lines_and_partial_line_at_eof() {
    assert_eq!(
        run(b"\r\n\nGET /<a> HTTP/1.0\r\n\r\n", 1),
        b"\r\n\nGET /%3Ca%3E HTTP/1.0\r\n\r\n".to_vec()
    );
    assert_eq!(run(b"GET /<a> HT", 2), b"GET /<a> HT".to_vec());
}

#[test]
fn connect_passes_the_rest_through() {
    let input = b"CONNECT /<a> HTTP/1.1\r\nHost: h\r\n\r\nGET /<b> HTTP/1.1\r\n\r\n";
    let got = run(input, 3);
    assert!(got.ends_with(b"\r\n\r\nGET /<b> HTTP/1.1\r\n\r\n"));
}

#[tokio::test]
async fn wrapper_handles_one_byte_reads_with_pending() {
    let body = b"keytext=<body> #x";
    let input = [
        b"GET /pks/lookup?search=Jane%20<jane+x@example.org> HTTP/1.0\r\nHost: h\r\n\r\n".to_vec(),
        format!(
            "POST /pks/add HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
        b"GET /x?a#b HTTP/1.1\r\n\r\n".to_vec(),
    ]
    .concat();
    let expected = [
        b"GET /pks/lookup?search=Jane%20%3Cjane+x@example.org%3E HTTP/1.0\r\nHost: h\r\n\r\n"
            .to_vec(),
        format!(
            "POST /pks/add HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
        b"GET /x?a%23b HTTP/1.1\r\n\r\n".to_vec(),
    ]
    .concat();
    let trickle = Trickle {
        data: input,
        pos: 0,
        pending_next: true,
    };
    assert_eq!(read_all(trickle).await, expected);
}

#[tokio::test]
async fn wrapper_over_duplex_with_small_reader_buffer() {
    let (mut client, server) = tokio::io::duplex(16);
    let body = b"<<<<>>>>".repeat(1000);
    let head = format!(
        "POST /pks/add?a=<b> HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let writer = {
        let body = body.clone();
        let head = head.clone();
        tokio::spawn(async move {
            client.write_all(head.as_bytes()).await.unwrap();
            client.write_all(&body).await.unwrap();
            client
                .write_all(b"GET /<c> HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            client.shutdown().await.unwrap();
        })
    };
    let mut io = RawTargetIo::new(server);
    let mut got = Vec::new();
    let mut buf = [0u8; 5];
    loop {
        let n = io.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    writer.await.unwrap();
    let expected = [
        head.replace("<b>", "%3Cb%3E").into_bytes(),
        body,
        b"GET /%3Cc%3E HTTP/1.1\r\n\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn writes_pass_through() {
    let (client, mut server) = tokio::io::duplex(64);
    let mut io = RawTargetIo::new(client);
    io.write_all(b"HTTP/1.0 200 OK\r\n\r\n<x>").await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"HTTP/1.0 200 OK\r\n\r\n<x>".to_vec());
}
