//! Stream capture and graph replay for the emulated backend, with CUDA's rules.
//!
//! While a stream captures, its work is recorded instead of run. An event recorded under
//! capture is a point of the capture; a stream that waits for it joins the capture as a new
//! *lane* (CUDA's fork), and the origin stream waiting for a lane's last point joins it back.
//! Ending the capture fails if some lane never rejoined, as `cuStreamEndCapture` does.
//!
//! Replay runs each lane on its own emulated stream, with the captured waits as real event
//! waits between them, so a graph missing a dependency races under emulation exactly as it
//! would on a GPU. Recorded work runs again on every replay: whatever a step changes must live
//! in device memory, which is the point of capturing.

use std::sync::{Arc, Mutex};

use super::emu::{lock, EmuEvent, EmuStream};
use crate::error::{DeviceError, Result};

/// Recorded work: runs once per replay.
pub(crate) type Node = Arc<dyn Fn() -> Result<()> + Send + Sync + 'static>;

/// Where a stream records while it is part of a capture (`None` when it is not).
pub(crate) type CaptureSlot = Arc<Mutex<Option<LaneRef>>>;

/// What a recorded work node does, for counting (CUDA's graph node types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A kernel (a GEMM counts as one).
    Kernel,
    /// A device-to-device copy.
    Copy,
    /// A memset.
    Fill,
}

#[derive(Clone)]
pub(crate) enum Step {
    Run(NodeKind, Node),
    /// Wait until lane `lane` has done its first `point` steps.
    Wait {
        lane: usize,
        point: usize,
    },
}

struct Lane {
    slot: CaptureSlot,
    /// Steps recorded so far.
    len: usize,
    /// The furthest point of this lane that another lane waited for.
    waited: usize,
}

struct CaptureState {
    lanes: Vec<Lane>,
    /// Every step in the order it was recorded: a valid order to enqueue them on replay.
    order: Vec<(usize, Step)>,
    /// Set when the capture ends: its events can no longer be waited for.
    ended: bool,
}

impl CaptureState {
    fn check_open(&self) -> Result<()> {
        if self.ended {
            return Err(DeviceError::Capture {
                reason: "the event was recorded during a capture that has ended".into(),
            });
        }
        Ok(())
    }
}

/// A stream's place in a capture.
#[derive(Clone)]
pub(crate) struct LaneRef {
    state: Arc<Mutex<CaptureState>>,
    lane: usize,
}

/// A point of a capture: after the first `point` steps of lane `lane`.
#[derive(Clone)]
pub(crate) struct CapturePoint {
    state: Arc<Mutex<CaptureState>>,
    lane: usize,
    point: usize,
}

/// What a finished capture recorded.
pub(crate) struct CapturedGraph {
    lanes: usize,
    order: Vec<(usize, Step)>,
}

impl LaneRef {
    /// A new capture whose origin (lane 0) records through `slot`.
    pub(crate) fn begin(slot: CaptureSlot) -> LaneRef {
        let state = CaptureState {
            lanes: vec![Lane {
                slot,
                len: 0,
                waited: 0,
            }],
            order: Vec::new(),
            ended: false,
        };
        LaneRef {
            state: Arc::new(Mutex::new(state)),
            lane: 0,
        }
    }

    fn push(&self, step: Step) {
        let mut st = lock(&self.state);
        st.lanes[self.lane].len += 1;
        st.order.push((self.lane, step));
    }

    pub(crate) fn push_run(&self, kind: NodeKind, node: Node) -> Result<()> {
        self.push(Step::Run(kind, node));
        Ok(())
    }

    /// Records a wait for `point`, which must belong to the same capture.
    pub(crate) fn push_wait(&self, point: &CapturePoint) -> Result<()> {
        if !Arc::ptr_eq(&self.state, &point.state) {
            return Err(DeviceError::Capture {
                reason: "a stream under capture waited for an event of another capture".into(),
            });
        }
        if point.lane == self.lane {
            // Earlier work of the same lane is ordered already.
            return Ok(());
        }
        {
            let mut st = lock(&self.state);
            st.check_open()?;
            let waited = &mut st.lanes[point.lane].waited;
            *waited = (*waited).max(point.point);
        }
        self.push(Step::Wait {
            lane: point.lane,
            point: point.point,
        });
        Ok(())
    }

    /// The current end of this lane.
    pub(crate) fn point(&self) -> CapturePoint {
        let len = lock(&self.state).lanes[self.lane].len;
        CapturePoint {
            state: Arc::clone(&self.state),
            lane: self.lane,
            point: len,
        }
    }

    /// Ends the capture (only from its origin). Every lane leaves it, whatever the outcome.
    pub(crate) fn end(&self) -> Result<CapturedGraph> {
        if self.lane != 0 {
            return Err(DeviceError::Capture {
                reason: "a capture must end on the stream that began it".into(),
            });
        }
        let (slots, unjoined, graph) = {
            let mut st = lock(&self.state);
            st.ended = true;
            let slots: Vec<CaptureSlot> = st.lanes.iter().map(|l| Arc::clone(&l.slot)).collect();
            let unjoined = st.lanes.iter().skip(1).filter(|l| l.waited < l.len).count();
            let graph = CapturedGraph {
                lanes: st.lanes.len(),
                order: std::mem::take(&mut st.order),
            };
            (slots, unjoined, graph)
        };
        for slot in slots {
            *lock(&slot) = None;
        }
        if unjoined > 0 {
            return Err(DeviceError::Capture {
                reason: format!(
                    "{unjoined} stream(s) forked into the capture did not rejoin the origin \
                     stream before the capture ended"
                ),
            });
        }
        Ok(graph)
    }
}

impl CapturePoint {
    /// Makes the stream behind `slot` (not capturing) join this capture as a new lane whose
    /// first step waits for this point.
    pub(crate) fn join(&self, slot: CaptureSlot) -> Result<()> {
        let lane = {
            let mut st = lock(&self.state);
            st.check_open()?;
            st.lanes.push(Lane {
                slot: Arc::clone(&slot),
                len: 0,
                waited: 0,
            });
            st.lanes.len() - 1
        };
        let lane = LaneRef {
            state: Arc::clone(&self.state),
            lane,
        };
        lane.push_wait(self)?;
        *lock(&slot) = Some(lane);
        Ok(())
    }
}

impl CapturedGraph {
    /// Lanes besides the origin: the streams a replay needs of its own.
    pub(crate) fn extra_lanes(&self) -> usize {
        self.lanes - 1
    }

    /// Recorded steps (work and waits).
    pub(crate) fn steps(&self) -> usize {
        self.order.len()
    }

    /// Recorded work nodes of `kind`.
    pub(crate) fn work_nodes(&self, kind: NodeKind) -> usize {
        self.order
            .iter()
            .filter(|(_, step)| matches!(step, Step::Run(k, _) if *k == kind))
            .count()
    }

    /// Queues one run of the graph: lane 0 on `origin`, lane k on `lanes[k - 1]`.
    pub(crate) fn replay(&self, origin: &EmuStream, lanes: &[&EmuStream]) -> Result<()> {
        if lanes.len() + 1 != self.lanes {
            return Err(DeviceError::Capture {
                reason: format!(
                    "the graph has {} lanes, {} streams were given",
                    self.lanes,
                    lanes.len() + 1
                ),
            });
        }
        origin.refuse_capture("launching a graph", "graphs are not nested")?;
        let streams: Vec<&EmuStream> = std::iter::once(origin)
            .chain(lanes.iter().copied())
            .collect();
        // points[l][k]: the event after lane l's first k steps.
        let mut points: Vec<Vec<EmuEvent>> = streams.iter().map(|s| vec![s.record()]).collect();
        for (lane, step) in &self.order {
            let stream = streams[*lane];
            match step {
                Step::Run(_, node) => {
                    let node = Arc::clone(node);
                    stream.enqueue(Box::new(move || node()))?;
                }
                Step::Wait { lane: l, point } => stream.wait_event(&points[*l][*point])?,
            }
            let after = stream.record();
            points[*lane].push(after);
        }
        Ok(())
    }
}
