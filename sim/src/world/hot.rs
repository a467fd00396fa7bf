//! The world's packed hot types, in one place: what a message slot, a delivered payload and a
//! rank's state hold, each laid out to fit one 64-byte cache line (asserted at compile time),
//! because at 100,000 ranks every delivery and every poll loads them from memory. Code outside
//! the world never sees them; inside it, `world.rs` and its parts use the accessors here.

use trainer_core::{Payload, Tag};

/// A payload as the world holds it, in a message slot or delivered into a rank's state: the
/// data as a boxed slice (which a `Vec` of exact capacity becomes and comes back from without
/// copying) and the checksum as a plain word, 32 bytes where a [`Payload`] (a `Vec`, the
/// modelled size and an `Option` checksum) takes 48. Whether there is a checksum is a bit its
/// holder keeps in a spare byte of its own, so that each holder fits one cache line.
pub(super) struct StoredPayload {
    pub(super) data: Box<[f32]>,
    pub(super) modelled_bytes: u64,
    /// The sender's checksum, when the holder's flag says there is one.
    pub(super) checksum: u64,
}

impl StoredPayload {
    /// `payload` in parts, and whether it carries a checksum.
    #[inline(always)]
    pub(super) fn new(payload: Payload) -> (StoredPayload, bool) {
        let stored = StoredPayload {
            data: payload.data.into_boxed_slice(),
            modelled_bytes: payload.modelled_bytes,
            checksum: payload.checksum.unwrap_or(0),
        };
        (stored, payload.checksum.is_some())
    }

    /// The payload as the sender handed it over; `checksummed` is the holder's flag.
    #[inline(always)]
    pub(super) fn into_payload(self, checksummed: bool) -> Payload {
        Payload {
            data: self.data.into_vec(),
            modelled_bytes: self.modelled_bytes,
            checksum: checksummed.then_some(self.checksum),
        }
    }

    /// A copy of the payload, leaving this one as it is.
    pub(super) fn to_payload(&self, checksummed: bool) -> Payload {
        Payload {
            data: self.data.to_vec(),
            modelled_bytes: self.modelled_bytes,
            checksum: checksummed.then_some(self.checksum),
        }
    }
}

/// A message on the fabric, or in its receiver's mailbox: one 64-byte cache line.
///
/// At 100,000 GPUs a hierarchical all-reduce has 700,000 messages in flight at once, each
/// slot written when sent and read when delivered, far apart in time and out of cache by then.
/// Holding a [`Payload`] made the slot 88 bytes, two cache lines for most slots; it holds a
/// [`StoredPayload`] instead, and whether that carries a checksum rides in the generation's
/// top bit.
pub(super) struct Message {
    pub(super) from: u32,
    pub(super) to: u32,
    /// The next message of the same mailbox (a slot), or [`NO_SLOT`].
    pub(super) next: u32,
    /// The low 31 bits of the restart generation it was sent in, and in the top bit
    /// [`CHECKSUMMED`].
    pub(super) generation_and_flag: u32,
    pub(super) tag: Tag,
    pub(super) payload: StoredPayload,
}

/// The bit of `Message::generation_and_flag` that says the payload carries a checksum.
pub(super) const CHECKSUMMED: u32 = 1 << 31;

impl Message {
    pub(super) fn new(
        generation: u64,
        from: u32,
        to: u32,
        tag: Tag,
        payload: Payload,
        next: u32,
    ) -> Self {
        let (payload, checksummed) = StoredPayload::new(payload);
        let flag = if checksummed { CHECKSUMMED } else { 0 };
        Message {
            from,
            to,
            next,
            generation_and_flag: Self::generation_bits(generation) | flag,
            tag,
            payload,
        }
    }

    /// A generation's low 31 bits. Telling generation g from g + 2^31 apart would take a
    /// message that stayed in flight across two billion restarts.
    pub(super) fn generation_bits(generation: u64) -> u32 {
        generation as u32 & !CHECKSUMMED
    }

    /// Whether it was sent in restart generation `generation`.
    pub(super) fn of_generation(&self, generation: u64) -> bool {
        self.generation_and_flag & !CHECKSUMMED == Self::generation_bits(generation)
    }

    pub(super) fn checksummed(&self) -> bool {
        self.generation_and_flag & CHECKSUMMED != 0
    }

    /// The payload as the sender handed it over.
    pub(super) fn into_payload(self) -> Payload {
        let checksummed = self.checksummed();
        self.payload.into_payload(checksummed)
    }

    /// A copy of the payload, leaving the message as it is.
    pub(super) fn payload(&self) -> Payload {
        self.payload.to_payload(self.checksummed())
    }
}

// A slot is one cache line (on 64-bit targets, where a boxed slice is 16 bytes).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Option<Message>>() == 64);

pub(super) const NO_SLOT: u32 = u32::MAX;

/// What a parked rank waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    Nothing,
    Message {
        from: u32,
        tag: Tag,
    },
    Timer,
    /// In `await_restart`.
    Restart,
    /// Not waiting: the message it waited for sits in its `delivered` slot.
    Delivered {
        from: u32,
        tag: Tag,
    },
}

/// What the world keeps per rank on the hot path, in one 64-byte cache line (aligned to
/// one): what it waits for, and the payload handed straight to it when the message it waits
/// for arrives. At 100,000 ranks a delivery and the receiver's next poll each load this
/// state from memory; at 96 bytes (a `Wait` enum and an `Option<Payload>`) every rank's state
/// straddled two lines. So the wait is kept as its kind, peer and tag, the payload in parts
/// (as a message slot keeps it), the flags in one byte, and when the rank parked (which
/// only the watchdog reads) in `World::parked_since_ns`. Early messages and wakers live in
/// side tables, touched only when used. (A 64-byte state that kept only the delivered
/// message's slot number, the message staying in the slab until taken, was 6% slower: one
/// more dependent load before the payload, and slots held longer are reused colder.)
#[repr(align(64))]
pub(super) struct RankState {
    /// The tag of the message waited for or delivered (`WaitKind::Message`, `Delivered`).
    pub(super) wait_tag: Tag,
    /// The payload of the message this rank was waiting for, delivered into its state; it
    /// carries a checksum when [`DELIVERED_CHECKSUMMED`] is set.
    pub(super) delivered: Option<StoredPayload>,
    /// The peer of the message waited for or delivered.
    pub(super) wait_from: u32,
    /// Messages that arrived before the rank asked for them: a list through `World::messages`,
    /// newest first, so early arrivals need no allocation of their own.
    pub(super) mailbox_head: u32,
    /// Counts this rank's timers; a timer event for an older one is stale.
    pub(super) timer_seq: u32,
    pub(super) wait_kind: WaitKind,
    /// [`TIMER_FIRED`], [`FINISHED`], [`DEAD`], [`MEMORY_LOST`], [`ABORTED`], [`TIMED_OUT`]
    /// and [`DELIVERED_CHECKSUMMED`].
    pub(super) flags: u8,
}

const _: () = assert!(std::mem::size_of::<RankState>() == 64);

/// [`Wait`]'s variants, without their fields (which `RankState` keeps beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum WaitKind {
    Nothing,
    Message,
    Timer,
    Restart,
    Delivered,
}

/// [`RankState::flags`]: its timer fired.
pub(super) const TIMER_FIRED: u8 = 1;
/// Its task returned.
pub(super) const FINISHED: u8 = 1 << 1;
/// Crashed and not yet replaced.
pub(super) const DEAD: u8 = 1 << 2;
/// Died since its last restart order: its memory is gone.
pub(super) const MEMORY_LOST: u8 = 1 << 3;
/// The job is stopping: communication fails with `Aborted`.
pub(super) const ABORTED: u8 = 1 << 4;
/// The watchdog gave up on its receive.
pub(super) const TIMED_OUT: u8 = 1 << 5;
/// The delivered payload carries a checksum.
pub(super) const DELIVERED_CHECKSUMMED: u8 = 1 << 6;

impl RankState {
    pub(super) fn new() -> RankState {
        RankState {
            wait_tag: Tag::new(0, 0, 0),
            delivered: None,
            wait_from: 0,
            mailbox_head: NO_SLOT,
            timer_seq: 0,
            wait_kind: WaitKind::Nothing,
            flags: 0,
        }
    }

    #[inline(always)]
    pub(super) fn wait(&self) -> Wait {
        let (from, tag) = (self.wait_from, self.wait_tag);
        match self.wait_kind {
            WaitKind::Nothing => Wait::Nothing,
            WaitKind::Message => Wait::Message { from, tag },
            WaitKind::Timer => Wait::Timer,
            WaitKind::Restart => Wait::Restart,
            WaitKind::Delivered => Wait::Delivered { from, tag },
        }
    }

    #[inline(always)]
    pub(super) fn set_wait(&mut self, wait: Wait) {
        self.wait_kind = match wait {
            Wait::Nothing => WaitKind::Nothing,
            Wait::Message { from, tag } => {
                (self.wait_from, self.wait_tag) = (from, tag);
                WaitKind::Message
            }
            Wait::Timer => WaitKind::Timer,
            Wait::Restart => WaitKind::Restart,
            Wait::Delivered { from, tag } => {
                (self.wait_from, self.wait_tag) = (from, tag);
                WaitKind::Delivered
            }
        };
    }

    #[inline(always)]
    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    pub(super) fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Clears `flag` and says whether it was set.
    #[inline(always)]
    pub(super) fn take_flag(&mut self, flag: u8) -> bool {
        let was = self.has(flag);
        self.set(flag, false);
        was
    }

    /// Takes `message`'s payload into the state, without copying its data.
    #[inline(always)]
    pub(super) fn hand_over(&mut self, message: Message) {
        debug_assert!(self.delivered.is_none());
        self.set(DELIVERED_CHECKSUMMED, message.checksummed());
        self.delivered = Some(message.payload);
    }

    pub(super) fn take_delivered(&mut self) -> Option<Payload> {
        let payload = self.delivered.take()?;
        Some(payload.into_payload(self.has(DELIVERED_CHECKSUMMED)))
    }
}
