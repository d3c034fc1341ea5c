//! Split brain among three real daemons, each pair linked through UDP
//! relays that can be cut: the master alone on the minority side, the
//! master with a slave on the majority side, and the master down for the
//! whole split while the two slaves, cut from each other, both take mail
//! (`split::cut_and_heal` and its checks: every acknowledged message on
//! every node exactly once, no UID shown for two messages, flags merged,
//! trees equal, converged within 5 s); and one link alone cut, the master
//! and a slave still hearing each other through the other slave.

mod common;
mod split;
use split::{cut_and_heal, Cut};

#[test]
fn three_nodes_heal_a_cut_that_isolates_the_master() {
    // The two slaves stay linked to each other but not to the master.
    cut_and_heal(Cut {
        nodes: 3,
        master: 2,
        sides: &[0, 0, 1],
        master_down: false,
    });
}

#[test]
fn three_nodes_heal_a_cut_that_isolates_one_slave() {
    // The master keeps a slave, which still sends it its deliveries to place.
    cut_and_heal(Cut {
        nodes: 3,
        master: 0,
        sides: &[0, 0, 1],
        master_down: false,
    });
}

#[test]
fn three_nodes_heal_a_split_of_the_slaves_while_the_master_is_down() {
    // The master stops before the cut and starts after the slaves healed.
    cut_and_heal(Cut {
        nodes: 3,
        master: 0,
        sides: &[0, 0, 1],
        master_down: true,
    });
}

/// Not a split: only the link between the master and one slave is cut,
/// and each still hears the other through the second slave. Once both
/// ends have noticed the cut (their 1 s idle timeout), every node takes
/// deliveries into INBOX. The cut-off slave still counts its master as
/// reachable through the relay (its `Alive` frames, `replication.md`
/// section 8b): it appends pending, the master places its messages, and
/// so no UID is given twice and nothing is renumbered; nothing may be lost
/// or shown under two UIDs.
#[test]
fn three_nodes_with_one_link_cut_lose_nothing() {
    use split::{deliver, subjects, Mesh, Recorder, USER};
    let _one = split::one_at_a_time();
    let mut rec = Recorder::default();
    let mesh = Mesh::start(3, 2);
    let (ok, _, err) = mesh.node(2).cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(common::wait_until(30, || mesh.settled()), "the nodes did not converge");
    mesh.cut_link(0, 2);
    // The direct link is gone for the slave before anything is delivered:
    // only the relay can keep it waiting for the master.
    let master = mesh.names[2].clone();
    assert!(
        common::wait_until(10, || {
            let st = common::admin_get(mesh.node(0), "/v1/status");
            st["mirror"]["incoming"][&master]["connected"] == false
        }),
        "node-a did not notice the cut"
    );
    // It still hears the master's signs of life, through node-b.
    let st = common::admin_get(mesh.node(0), "/v1/status");
    let age = st["mirror"]["alive"][&master]["age_ms"].as_u64();
    assert!(age.is_some_and(|a| a <= 2_000), "{}", st["mirror"]["alive"]);
    assert_eq!(
        st["mirror"]["alive"][&master]["via"],
        mesh.names[1].as_str(),
        "{}",
        st["mirror"]["alive"]
    );
    assert_eq!(st["mirror"]["alive"][&master]["direct"], false);
    std::thread::scope(|s| {
        for i in 0..3 {
            let node = mesh.node(i);
            s.spawn(move || deliver(node, &format!("at-{i}"), 20));
        }
    });
    let start = std::time::Instant::now();
    let mut done = false;
    for _ in 0..300 {
        mesh.look(&mut rec);
        if mesh.settled() {
            done = true;
            break;
        }
    }
    assert!(done, "the nodes did not converge with one link cut");
    let took = start.elapsed();
    eprintln!("converged {:.2}s after the deliveries", took.as_secs_f64());
    assert!(took.as_secs_f64() < 5.0, "convergence took {took:?}");
    let mut want: Vec<String> = (0..3).flat_map(|i| (0..20).map(move |k| format!("at-{i}-{k}"))).collect();
    want.sort();
    let views: Vec<_> = (0..3).map(|i| rec.look(&mesh.names[i], mesh.node(i))).collect();
    for (i, v) in views.iter().enumerate() {
        assert_eq!(subjects(v, "INBOX"), want, "{}", mesh.names[i]);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "the nodes show different UIDs");
    let moved = common::admin_get(mesh.node(2), "/v1/conflicts")["resolved"]
        .as_array()
        .unwrap()
        .len();
    eprintln!("the master moved {moved} messages");
    assert_eq!(moved, 0, "the cut-off slave gave UIDs the master renumbered");
    // The master gave every UID: 1 to 60, no gaps left by renumbering.
    let uids: Vec<u32> = views[0].0.keys().filter(|k| k.0 == "INBOX").map(|k| k.2).collect();
    assert_eq!(uids, (1..=60).collect::<Vec<u32>>());
}
