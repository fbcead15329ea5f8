#!/usr/bin/env python3
"""Where the CPU of a TCP transfer goes, stage by stage, in ms of CPU per GB moved.

Reads `perf script -F comm,ip,sym` of a system-wide `perf record -a -g` taken during the
transfer, keeps the samples of the iperf3 threads and every sample under `net_rx_action`
(network softirq, whichever task it ran on: on the simulated hosts every hop of both hosts
runs in softirq, mostly in the iperf3 threads' context, the rest in ksoftirqd or whatever task
was on the CPU), and classifies each by the innermost marker function on its stack (leaf
first), so a sample counts once, in the deepest stage it was in. Usage:

    perf script -i FILE -F comm,ip,sym | bench/stages.py GB HZ

GB: gigabytes received during the recording, HZ: perf's sampling frequency. Prints one
`stage<TAB>ms/GB` line per stage and a `total` line. Standard library only.
"""

import collections
import sys

# (stage, marker functions). Leaf first: the first marker met walking from the sampled
# function outwards names the stage. Netfilter markers are the hook bodies themselves (not
# nf_hook_slow's callers: br_netfilter's ip_sabotage_in and br_nf_* call the rest of the path
# through okfn, so they would swallow it).
STAGES = [
    ("copy to/from user", ["_copy_from_iter", "_copy_to_iter"]),
    ("netfilter: nft chains, conntrack, NAT", [
        "nft_do_chain_inet", "nft_do_chain", "nf_conntrack_in", "nf_confirm", "nf_nat_inet_fn",
        "nf_nat_ipv4_pre_routing", "nf_nat_ipv4_out", "nf_nat_ipv4_local_in",
        "nf_nat_ipv4_local_fn", "ipv4_conntrack_defrag", "nf_ct_bridge_pre", "nf_hook_slow"]),
    ("routing lookups (fib rules and tables)", [
        "ip_route_input_noref", "ip_route_output_key_hash", "ip_route_output_flow",
        "fib_validate_source", "fib_rules_lookup"]),
    ("VXLAN: outer UDP receive, decap", ["vxlan_rcv", "udp_rcv", "udp_queue_rcv_one_skb"]),
    ("VXLAN: decapped packet to the pod (gro_cells)", ["gro_cell_poll"]),
    ("VXLAN: encap, outer IP out", ["vxlan_xmit"]),
    ("TCP receive", ["tcp_v4_rcv", "tcp_v6_rcv"]),
    ("bridge (ports in, bridge device out)", ["br_handle_frame", "br_dev_xmit"]),
    ("IP receive, forward, output", ["ip_rcv", "ip_forward", "ip_output", "ip_rcv_finish",
                                     "ip_local_out", "ipv6_rcv", "ip6_forward", "ip6_output"]),
    ("TCP send", ["tcp_write_xmit", "__tcp_push_pending_frames", "tcp_sendmsg_locked",
                  "tcp_recvmsg"]),
    ("veth hops, backlog", ["veth_xmit", "process_backlog", "__dev_queue_xmit"]),
]
OTHER = "other (syscalls, scheduler, select, timers)"
MARK = {fn: name for name, fns in STAGES for fn in fns}


def classify(stack):
    for fn in stack:
        if fn in MARK:
            return MARK[fn]
    return OTHER


def samples(lines):
    """Yield (comm, stack) per sample, the stack leaf first, as function names."""
    comm, stack = "", []
    for line in lines:
        if not line.strip():
            if stack:
                yield comm, stack
            comm, stack = "", []
        elif line[0] in " \t":
            parts = line.split()
            if len(parts) >= 2:
                stack.append(parts[1].split("+")[0])
        else:
            comm = line.split()[0]
    if stack:
        yield comm, stack


def wanted(comm, stack):
    return comm == "iperf3" or "net_rx_action" in stack


def main():
    gb, hz = float(sys.argv[1]), float(sys.argv[2])
    if gb <= 0 or hz <= 0:
        sys.exit("stages.py: GB and HZ must be positive")
    count = collections.Counter(classify(s) for c, s in samples(sys.stdin) if wanted(c, s))
    total = sum(count.values())
    for name in [n for n, _ in STAGES] + [OTHER]:
        print(f"{name}\t{count[name] / hz / gb * 1000:.0f}")
    print(f"total\t{total / hz / gb * 1000:.0f}")


if __name__ == "__main__":
    main()
