use super::*;

fn range(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
    Range {
        subnet: subnet.parse().unwrap(),
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
        gateway: gw.parse().unwrap(),
    }
}

#[test]
fn candidates_wrap_and_skip() {
    let set = RangeSet(vec![
        range("10.0.0.0/29", "10.0.0.0", "10.0.0.7", "10.0.0.1"),
        range("10.0.1.0/30", "10.0.1.1", "10.0.1.2", "10.0.1.1"),
    ]);
    let all: Vec<String> = set.candidates(None).map(|(_, ip)| ip.to_string()).collect();
    assert_eq!(
        all,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.2"]
    );
    assert_eq!(set.capacity(), 6);
    let from: Vec<String> = set
        .candidates(Some("10.0.0.5".parse().unwrap()))
        .map(|(_, ip)| ip.to_string())
        .collect();
    assert_eq!(
        from,
        ["10.0.0.6", "10.0.1.2", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
    );
    let (idx, ip) = set
        .candidates(Some("10.0.1.2".parse().unwrap()))
        .next()
        .unwrap();
    assert_eq!((idx, ip.to_string().as_str()), (0, "10.0.0.2"));
}

#[test]
fn huge_ipv6_range_is_lazy() {
    let set = RangeSet(vec![range(
        "fd00::/64",
        "fd00::1",
        "fd00::ffff:ffff:ffff:ffff",
        "fd00::1",
    )]);
    let first: Vec<String> = set
        .candidates(None)
        .take(2)
        .map(|(_, ip)| ip.to_string())
        .collect();
    assert_eq!(first, ["fd00::2", "fd00::3"]);
    assert_eq!(set.capacity(), (1u128 << 64) - 2);
}

#[test]
fn overlap() {
    let a = range("10.0.0.0/24", "10.0.0.10", "10.0.0.20", "10.0.0.1");
    let b = range("10.0.0.0/24", "10.0.0.21", "10.0.0.30", "10.0.0.1");
    let c = range("10.0.0.0/16", "10.0.0.15", "10.0.0.16", "10.0.0.1");
    assert!(!a.overlaps(&b));
    assert!(a.overlaps(&c) && c.overlaps(&a));
}
