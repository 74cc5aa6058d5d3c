//! WebSocket protocol conformance at the edge, through nginx and directly: the close handshake is
//! answered (RFC 6455 §5.5.1), a text frame that is not UTF-8 closes with 1007 (§8.1).

mod common;

use common::{Raw, Read};
use e2e::spawn_app;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    let urls = [
        app.ws_url(0),
        app.ws_url(1),
        format!("ws://{}/ws", app.edges[0]),
    ];
    for url in &urls {
        for code in [1000u16, 4321] {
            let mut ws = Raw::connect(url, &token).await;
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            })))
            .await;
            match ws.read(Duration::from_secs(5)).await {
                Read::Closed(got) => assert_eq!(got, Some(code), "{url}"),
                other => panic!("{url}: close {code} not answered: {other:?}"),
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_the_socket_with_1007() {
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    for url in [app.ws_url(0), format!("ws://{}/ws", app.edges[1])] {
        for bad in [
            &b"{\"type\":\"ping\",\"rid\":\"\xff\xfe\"}"[..],
            b"\xc0\xaf",
        ] {
            let mut ws = Raw::connect(&url, &token).await;
            let frame = Frame::message(bad.to_vec(), OpCode::Data(Data::Text), true);
            ws.send(Message::Frame(frame)).await;
            match ws.read(Duration::from_secs(5)).await {
                Read::Closed(got) => assert_eq!(got, Some(1007), "{url} {bad:?}"),
                other => panic!("{url} {bad:?}: expected close 1007, got {other:?}"),
            }
        }
    }
    app.stop().await;
}
