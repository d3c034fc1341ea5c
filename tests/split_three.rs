//! Split brain among three real daemons, each pair linked through UDP
//! relays that can be cut: the master alone on the minority side, the
//! master with a slave on the majority side, and the master down for the
//! whole split while the two slaves, cut from each other, both take mail.
//! The scenario and its checks are `split::cut_and_heal`'s: every
//! acknowledged message on every node exactly once, no UID shown for two
//! messages, flags merged, trees equal, converged within 5 s.

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
