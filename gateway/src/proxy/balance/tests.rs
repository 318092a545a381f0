use super::*;
use std::io::{Read, Write};
use tokio::sync::Semaphore;

fn permit() -> OwnedSemaphorePermit {
    match Arc::new(Semaphore::new(1)).try_acquire_owned() {
        Ok(p) => p,
        Err(e) => panic!("a fresh semaphore has a permit: {e}"),
    }
}

/// A connection accepted on loopback, as a hand-over: (the client's end, the hand-over).
fn accepted(tls: bool) -> (std::net::TcpStream, Handoff) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (stream, peer) = listener.accept().expect("accept");
    let handoff = Handoff {
        stream,
        peer,
        tls,
        permit: permit(),
    };
    (client, handoff)
}

#[test]
fn ties_stay_and_the_least_loaded_worker_gets_the_connection() {
    let (balance, _inboxes) = Balance::new(3);
    assert_eq!(balance.pick(0), None, "all equal: the acceptor keeps it");
    let a = balance.serving(0);
    let b = balance.serving(0);
    let c = balance.serving(1);
    assert_eq!(balance.open(), vec![2, 1, 0]);
    assert_eq!(balance.pick(0), Some(2));
    assert_eq!(balance.pick(1), Some(2));
    assert_eq!(balance.pick(2), None, "the least loaded keeps its own");
    let d = balance.serving(2);
    // 2, 1, 1: worker 1 and 2 tie for the least; either is right, never worker 0.
    assert!(matches!(balance.pick(0), Some(1 | 2)));
    assert_eq!(balance.pick(1), None, "1 against 1 and 2: a tie stays");
    drop((a, b));
    assert_eq!(balance.open(), vec![0, 1, 1]);
    assert_eq!(balance.pick(1), Some(0));
    drop((c, d));
    assert_eq!(balance.open(), vec![0, 0, 0]);
}

#[test]
fn a_single_worker_never_hands_off() {
    let (balance, _inboxes) = Balance::new(1);
    let _a = balance.serving(0);
    let _b = balance.serving(0);
    assert_eq!(balance.pick(0), None);
    assert_eq!(Balance::new(0).0.open(), vec![0], "0 workers means one");
}

#[test]
fn a_stopped_worker_is_never_picked_and_gives_connections_back() {
    let (balance, mut inboxes) = Balance::new(3);
    let _a = balance.serving(0);
    let _b = balance.serving(1);
    // Worker 2 (the least loaded) has stopped: its inbox is gone.
    drop(inboxes.pop());
    assert_eq!(balance.pick(0), None, "0 against 1: a tie, and 2 is gone");
    let _c = balance.serving(0);
    assert_eq!(balance.pick(0), Some(1));

    let (_client, handoff) = accepted(true);
    let peer = handoff.peer;
    match balance.hand_off(2, handoff) {
        Err(back) => assert_eq!((back.peer, back.tls), (peer, true)),
        Ok(()) => panic!("a stopped worker took a connection"),
    }
    let (_client, handoff) = accepted(false);
    assert!(balance.hand_off(7, handoff).is_err(), "no such worker");
}

/// A connection accepted on one runtime is served by another: the stream leaves the first
/// reactor and joins the second, bytes flow both ways, and the count follows the guard.
#[test]
fn a_handed_over_connection_is_served_by_the_other_runtime() {
    let (balance, mut inboxes) = Balance::new(2);
    let Some(inbox) = inboxes.pop() else {
        panic!("two inboxes");
    };
    let served_by = balance.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut inbox = inbox;
            let handoff = inbox.recv().await.expect("a connection");
            let _serving = served_by.serving(1);
            // Worker 0 may still hold its own guard at this instant: only ours is certain.
            assert_eq!(served_by.open().get(1), Some(&1), "worker 1 counts it");
            let mut stream = tokio::net::TcpStream::from_std(handoff.stream).expect("join");
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.expect("read");
            stream.write_all(&buf).await.expect("write");
            stream.write_all(b" from worker 1").await.expect("write");
            handoff.peer
        })
    });

    let accepting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    let local = client.local_addr().expect("client addr");
    accepting.block_on(async {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let (stream, peer) = listener.accept().await.expect("accept");
        let _busy = balance.serving(0);
        assert_eq!(
            balance.pick(0),
            Some(1),
            "worker 0 serves one, worker 1 none"
        );
        let handoff = Handoff {
            stream: stream.into_std().expect("leave the reactor"),
            peer,
            tls: false,
            permit: permit(),
        };
        balance.hand_off(1, handoff).expect("worker 1 is running");
    });
    client.write_all(b"hello").expect("send");
    let mut reply = String::new();
    client.read_to_string(&mut reply).expect("reply");
    assert_eq!(reply, "hello from worker 1");
    let peer = server.join().expect("server thread");
    assert_eq!(peer, local, "the peer address travels with the connection");
    assert_eq!(balance.open(), vec![0, 0]);
}
