//! IMAP protocol pieces that need no I/O: command framing, modified UTF-7,
//! MIME views for FETCH, SEARCH evaluation, SORT and THREAD ordering and
//! response encoding helpers.
//! Command syntax itself is parsed by imap-codec, except the extension
//! grammar it does not know ([`ext`]).

pub mod condstore;
pub mod ext;
pub mod fragment;
pub mod mime;
pub mod mutf7;
pub mod search;
pub mod searchres;
pub mod sort;
