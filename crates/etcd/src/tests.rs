use super::*;

#[test]
fn prefix_end_increments_the_last_byte() {
    assert_eq!(prefix_end(b"/cnirs/"), b"/cnirs0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
}

#[test]
fn endpoints_are_http_host_port() {
    assert_eq!(
        parse_endpoint("http://10.0.0.1:2379/").unwrap(),
        "http://10.0.0.1:2379"
    );
    assert_eq!(
        parse_endpoint("http://[::1]:2379").unwrap(),
        "http://[::1]:2379"
    );
    assert_eq!(
        parse_endpoint("http://etcd-1.local:2379").unwrap(),
        "http://etcd-1.local:2379"
    );
    assert_eq!(
        parse_endpoint("https://10.0.0.1:2379/").unwrap(),
        "https://10.0.0.1:2379"
    );
    assert!(matches!(
        Client::new(&["https://10.0.0.1:2379".into()]),
        Err(EtcdError::TlsSetup(TlsSetupError::NoCa))
    ));
    for bad in [
        "ftp://10.0.0.1:2379",
        "10.0.0.1:2379",
        "http://10.0.0.1",
        "http://10.0.0.1:0",
        "http://10.0.0.1:99999",
        "http://:2379",
        "http://a b:2379",
        "http://[zz]:1",
        "http://h:1/v3",
    ] {
        assert!(parse_endpoint(bad).is_err(), "{bad}");
    }
    assert!(matches!(Client::new(&[]), Err(EtcdError::NoEndpoints)));
}

#[test]
fn a_dead_endpoint_fails_over_then_gives_up_with_every_endpoint_named() {
    // Two ports nothing listens on (bound then closed): connect is refused at once.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        })
        .collect();
    let opts = Options {
        retry_deadline: Duration::from_millis(200),
        ..Options::default()
    };
    let c = Client::with_options(&dead, opts).unwrap();
    match c.get("k") {
        Err(EtcdError::Unavailable { endpoints, .. }) => {
            assert!(endpoints.contains(&dead[0][7..]) && endpoints.contains(&dead[1][7..]))
        }
        other => panic!("{other:?}"),
    }
}
