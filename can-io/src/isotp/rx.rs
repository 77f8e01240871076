//! Reassembly of one direction of an ISO-TP link, shared by the endpoint (which also answers
//! with flow control) and the passive monitor (which does not).

use super::IsoTpError;

/// What a frame did to the reassembly.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxStep {
    /// A whole message.
    Message(Vec<u8>),
    /// A first frame was accepted; a message of `len` bytes is due.
    Started { len: u32 },
    /// A consecutive frame was accepted; `in_block` counts those since the last flow control.
    Continue { in_block: u32 },
    /// A first frame announced more than the limit: answer OVERFLOW.
    Overflow(IsoTpError),
    /// The frame was refused (ignored, or the reception aborted: see
    /// [`IsoTpError::aborts_transfer`]).
    Refused(IsoTpError),
}

#[derive(Debug)]
struct Reception {
    buf: Vec<u8>,
    len: u32,
    next_sn: u8,
    cf_capacity: usize,
    in_block: u32,
}

/// The receive half of a link direction.
#[derive(Debug)]
pub(crate) struct Reassembler {
    max_len: u32,
    cur: Option<Reception>,
}

impl Reassembler {
    pub(crate) fn new(max_len: u32) -> Self {
        Reassembler { max_len, cur: None }
    }

    pub(crate) fn in_progress(&self) -> bool {
        self.cur.is_some()
    }

    /// Abort the reception in progress, if any.
    pub(crate) fn abort(&mut self) -> bool {
        self.cur.take().is_some()
    }

    /// Drop a reception in progress because a new message starts; the error to report.
    fn interrupt(&mut self) -> Option<IsoTpError> {
        self.cur.take().map(|r| IsoTpError::Interrupted {
            len: r.len,
            received: r.buf.len(),
        })
    }

    /// A single frame: always a whole message. Returns the interruption error, if a reception
    /// was in progress.
    pub(crate) fn single(&mut self, data: &[u8]) -> (Option<IsoTpError>, RxStep) {
        (self.interrupt(), RxStep::Message(data.to_vec()))
    }

    /// A first frame announcing `len` bytes in a CAN frame of `frame_len` bytes, with
    /// `overhead` address bytes.
    pub(crate) fn first(
        &mut self,
        len: u32,
        data: &[u8],
        frame_len: usize,
        overhead: usize,
    ) -> (Option<IsoTpError>, RxStep) {
        if frame_len < 8 {
            return (
                None,
                RxStep::Refused(IsoTpError::InvalidFrame {
                    reason: "first frame in a CAN frame shorter than 8 bytes",
                }),
            );
        }
        // A message a single frame of this RX_DL could carry must not come as a first frame.
        let min = if frame_len <= 8 {
            8 - overhead
        } else {
            frame_len - 1 - overhead
        } as u32;
        if len < min {
            return (
                None,
                RxStep::Refused(IsoTpError::FirstFrameTooShort { len, min }),
            );
        }
        let interrupted = self.interrupt();
        if len > self.max_len {
            return (
                interrupted,
                RxStep::Overflow(IsoTpError::MessageTooLong {
                    len,
                    max: self.max_len,
                }),
            );
        }
        let mut buf = Vec::with_capacity((len as usize).min(1 << 16));
        buf.extend_from_slice(data);
        self.cur = Some(Reception {
            buf,
            len,
            next_sn: 1,
            cf_capacity: frame_len - overhead - 1,
            in_block: 0,
        });
        (interrupted, RxStep::Started { len })
    }

    /// A consecutive frame.
    pub(crate) fn consecutive(&mut self, sn: u8, data: &[u8]) -> RxStep {
        let Some(r) = self.cur.as_mut() else {
            return RxStep::Refused(IsoTpError::UnexpectedConsecutiveFrame);
        };
        if sn != r.next_sn {
            let expected = r.next_sn;
            self.cur = None;
            return RxStep::Refused(IsoTpError::WrongSequenceNumber { expected, got: sn });
        }
        let needed = (r.len as usize - r.buf.len()).min(r.cf_capacity);
        if data.len() < needed {
            self.cur = None;
            return RxStep::Refused(IsoTpError::ShortConsecutiveFrame {
                needed,
                got: data.len(),
            });
        }
        r.buf.extend_from_slice(&data[..needed]);
        r.next_sn = (r.next_sn + 1) & 0x0F;
        r.in_block += 1;
        if r.buf.len() == r.len as usize {
            let done = self.cur.take().map(|r| r.buf).unwrap_or_default();
            return RxStep::Message(done);
        }
        RxStep::Continue {
            in_block: r.in_block,
        }
    }

    /// A flow control was sent: a new block starts.
    pub(crate) fn block_restarted(&mut self) {
        if let Some(r) = self.cur.as_mut() {
            r.in_block = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_and_checks_sequence() {
        let mut r = Reassembler::new(100);
        assert_eq!(
            r.first(20, &[0; 6], 8, 0),
            (None, RxStep::Started { len: 20 })
        );
        assert_eq!(r.consecutive(1, &[1; 7]), RxStep::Continue { in_block: 1 });
        assert_eq!(
            r.consecutive(3, &[2; 7]),
            RxStep::Refused(IsoTpError::WrongSequenceNumber {
                expected: 2,
                got: 3
            })
        );
        assert!(!r.in_progress());
        assert_eq!(
            r.consecutive(2, &[2; 7]),
            RxStep::Refused(IsoTpError::UnexpectedConsecutiveFrame)
        );
    }

    #[test]
    fn first_frame_limits() {
        let mut r = Reassembler::new(100);
        assert!(matches!(
            r.first(7, &[0; 6], 8, 0),
            (
                None,
                RxStep::Refused(IsoTpError::FirstFrameTooShort { len: 7, min: 8 })
            )
        ));
        // Extended addressing: 7 bytes no longer fit a single frame.
        assert!(matches!(
            r.first(7, &[0; 5], 8, 1),
            (None, RxStep::Started { .. })
        ));
        assert!(matches!(
            r.first(101, &[0; 6], 8, 0),
            (
                Some(IsoTpError::Interrupted { .. }),
                RxStep::Overflow(IsoTpError::MessageTooLong { len: 101, max: 100 })
            )
        ));
        assert!(matches!(
            r.first(62, &[0; 62], 64, 0),
            (None, RxStep::Refused(IsoTpError::FirstFrameTooShort { .. }))
        ));
        assert!(matches!(
            r.first(20, &[0; 5], 7, 0),
            (None, RxStep::Refused(IsoTpError::InvalidFrame { .. }))
        ));
    }

    #[test]
    fn short_consecutive_frame_aborts() {
        let mut r = Reassembler::new(100);
        r.first(20, &[0; 6], 8, 0);
        assert_eq!(
            r.consecutive(1, &[1; 3]),
            RxStep::Refused(IsoTpError::ShortConsecutiveFrame { needed: 7, got: 3 })
        );
        r.first(8, &[0; 6], 8, 0);
        // The last frame needs only the remaining bytes; padding is cut off.
        assert_eq!(
            r.consecutive(1, &[1, 2, 0xCC, 0xCC]),
            RxStep::Message(vec![0, 0, 0, 0, 0, 0, 1, 2])
        );
    }
}
