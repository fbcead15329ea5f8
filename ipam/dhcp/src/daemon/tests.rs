#![allow(clippy::unwrap_used)]

use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn go_durations() {
    for (text, secs) in [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("2m0.5s", 120.5),
    ] {
        assert_eq!(
            parse_go_duration(text).unwrap().as_secs_f64(),
            secs,
            "{text}"
        );
    }
    for bad in ["", "10", "s", "1x", "-1s", "1s2"] {
        assert!(parse_go_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn flags_as_go_parses_them() {
    let f = parse_flags(&s(&[])).unwrap();
    assert_eq!(f.socket_path, config::DEFAULT_SOCKET_PATH);
    assert_eq!(f.settings, Settings::default());
    let f = parse_flags(&s(&[
        "-socketpath",
        "/tmp/x.sock",
        "--hostprefix=/host",
        "-broadcast",
        "-timeout=3s",
        "-resendmax",
        "5s",
        "-resendtimeout=1m",
        "-pidfile=/run/d.pid",
    ]))
    .unwrap();
    assert_eq!(f.socket_path, "/tmp/x.sock");
    assert_eq!(f.settings.host_prefix, "/host");
    assert!(f.settings.broadcast);
    assert_eq!(f.settings.timeout, Duration::from_secs(3));
    assert_eq!(f.settings.resend_max, Duration::from_secs(5));
    assert_eq!(f.settings.resend_timeout, Duration::from_secs(60));
    assert_eq!(f.pidfile, Some(PathBuf::from("/run/d.pid")));
    assert!(
        !parse_flags(&s(&["-broadcast=false"]))
            .unwrap()
            .settings
            .broadcast
    );
    for bad in [&["-nope"][..], &["-timeout"], &["-timeout", "ten"], &["x"]] {
        assert!(parse_flags(&s(bad)).is_err(), "{bad:?}");
    }
}

/// The whole protocol over a socketpair: our client's call reaches `serve`, and a config
/// error travels back as the response's Error, as net/rpc carries it.
#[test]
fn an_allocate_that_fails_answers_the_error_over_net_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let daemon = Daemon::new(Settings::default());
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let _ = serve(&daemon, &s);
            }
        });
        let args = CmdArgs {
            container_id: "c1".into(),
            netns: "/nonexistent/netns".into(),
            ifname: "eth0".into(),
            stdin_data: br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#.to_vec(),
            ..Default::default()
        };
        let e = rpc::call::<GoResult>(&path, rpc::ALLOCATE, &args).unwrap_err();
        assert!(
            daemon.leases.lock().unwrap().is_empty(),
            "a failed allocate keeps nothing"
        );
        match e {
            RpcError::Remote { method, msg } => {
                assert_eq!(method, rpc::ALLOCATE);
                assert!(msg.contains("/nonexistent/netns"), "{msg}");
            }
            other => panic!("{other}"),
        }
        // Release of something never allocated: fine, and nothing is kept for it.
        rpc::call::<Empty>(&path, rpc::RELEASE, &args).unwrap();
    });
    assert!(
        daemon.leases.lock().unwrap().is_empty(),
        "no entry left behind"
    );
}
