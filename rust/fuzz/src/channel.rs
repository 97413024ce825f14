//! The migration channel: any stream, fed to the source's sender in any reads, with
//! any settings, arrives at the destination byte for byte, or is refused only for a
//! guest larger than the destination takes (by the sender itself for one over 2^32
//! pages); and any frames at all leave a receiver refusing or releasing, never
//! failing otherwise.

use novacron_engine::channel::{SenderConfig, StreamReceiver, StreamSender, ANNOUNCE, HEADER_LEN};
use novacron_engine::{Codec, EncoderConfig, PageStore};

use crate::input::Input;
use crate::split::{read_sizes, reads};

/// `(kind, payload)` of every frame in `wire` (the sender's: whole frames).
fn frames(wire: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        out.push((rest[0], &rest[HEADER_LEN..HEADER_LEN + len]));
        rest = &rest[HEADER_LEN + len..];
    }
    out
}

/// The largest guest the destination takes (a fixed figure, so that the target behaves
/// the same on any machine; by default a receiver takes what its host's memory holds).
const DEST_MAX_PAGES: u64 = 1 << 22;

/// Both ends, joined in order.
struct Link {
    sender: StreamSender,
    receiver: StreamReceiver,
    released: Vec<u8>,
    /// the destination refused the guest's size (and the channel is dropped)
    too_large: bool,
}

impl Link {
    /// Carries `wire` to the receiver; its `ANNOUNCE` goes back to the sender, and
    /// what that lets go follows.
    fn deliver(&mut self, wire: Vec<u8>) {
        if self.too_large {
            return;
        }
        let mut queue = vec![wire];
        while let Some(part) = queue.pop() {
            for (kind, payload) in frames(&part) {
                match self.receiver.apply(kind, payload) {
                    Ok(out) => self.released.extend_from_slice(out),
                    Err(err) => {
                        assert!(
                            self.sender.total_pages() > DEST_MAX_PAGES,
                            "the sender's frames apply: {err:?}"
                        );
                        self.too_large = true;
                        return;
                    }
                }
                if !self.receiver.reply.is_empty() {
                    let reply = std::mem::take(&mut self.receiver.reply);
                    let (kind, hashes) = frames(&reply)[0];
                    assert_eq!(kind, ANNOUNCE);
                    queue.insert(0, self.sender.announce(hashes).expect("an announcement"));
                }
            }
        }
    }
}

/// The sender's settings the input picks.
fn config(input: &mut Input<'_>) -> SenderConfig {
    SenderConfig {
        batch_pages: 1 + input.below(16),
        wait_for_announce: input.flag(),
        store: input.flag().then(|| PageStore::new(input.below(64))),
        gated: input.flag(),
        packed_heads: input.flag(),
        engine: EncoderConfig {
            codec: [Codec::None, Codec::Lz4, Codec::Zstd][input.below(3)],
            delta_cache_pages: input.below(64),
            ..EncoderConfig::default()
        },
    }
}

/// Any frames to a fresh receiver: each is taken or refused; after a refusal the
/// receiver takes nothing more (a real destination drops the channel).
fn hostile(input: &mut Input<'_>) {
    let store = input.flag().then(|| PageStore::new(16));
    let mut receiver = StreamReceiver::new(store, 1 << (10 + input.below(12)));
    while !input.is_empty() {
        let kind = input.byte() % 11;
        let payload = input.chunk();
        if receiver.apply(kind, payload).is_err() {
            break;
        }
    }
}

/// The check: see the module's text.
///
/// # Panics
/// When what the destination released differs from the stream, or a sender's frame is
/// refused.
pub fn channel(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() % 4 == 0 {
        hostile(&mut input);
        return;
    }
    let config = config(&mut input);
    let early = input.flag();
    let store = PageStore::new(input.below(64));
    let sizes = read_sizes(&mut input);
    let stream = input.rest();
    let mut link = Link {
        sender: StreamSender::new(config),
        receiver: StreamReceiver::new(Some(store), 64 << 20)
            .max_pages(DEST_MAX_PAGES)
            .expect("a limit"),
        released: Vec::new(),
        too_large: false,
    };
    if early {
        let reply = std::mem::take(&mut link.receiver.reply);
        let (_, hashes) = frames(&reply)[0];
        let out = link.sender.announce(hashes).expect("an announcement");
        link.deliver(out);
    }
    for read in reads(stream, &sizes) {
        let out = match link.sender.feed(read) {
            Ok(out) => out,
            Err(err) => {
                // the one stream a sender refuses: a guest no receiver would take
                let why = err.to_string();
                assert!(why.contains("at most 2^32"), "the sender refused: {why}");
                return; // the migration fails; the VM stays on the source
            }
        };
        link.deliver(out);
        if link.sender.at_gate() {
            let out = link.sender.flush().expect("flush");
            link.deliver(out);
            let out = link.sender.open_gate().expect("the gate opens");
            link.deliver(out);
        }
    }
    let out = link.sender.finish().expect("finish");
    link.deliver(out);
    if link.too_large {
        return; // the migration fails; the VM stays on the source
    }
    assert!(link.receiver.ended, "no END arrived");
    assert!(
        link.released == stream,
        "the destination released other bytes"
    );
}
