//! Graphs: the work of a stream (and of the streams it forks to) recorded once and replayed
//! with one launch.
//!
//! ```
//! use stagformer_kernels::device::{Device, DeviceBuffer};
//!
//! # fn main() -> Result<(), stagformer_kernels::error::DeviceError> {
//! let device = Device::emulated();
//! let stream = device.new_stream()?;
//! let src = DeviceBuffer::from_host(&stream, &[1.0f32, 2.0])?;
//! let mut dst = DeviceBuffer::<f32>::alloc(&device, 2)?;
//! // Recorded, not run.
//! let (graph, ()) = stream.capture(|| dst.copy_from(&stream, &src))?;
//! graph.launch()?;
//! assert_eq!(dst.to_host(&stream)?, vec![1.0, 2.0]);
//! # Ok(())
//! # }
//! ```
//!
//! # Rules (CUDA's, enforced on both backends)
//!
//! * Only device work is captured: kernels, GEMMs, device-to-device copies, fills, event
//!   records and waits. Copies from or to host memory, host functions, timed events and
//!   synchronisation are refused with [`DeviceError::NotCapturable`] on a stream under
//!   capture. Whatever changes between replays must therefore live in device memory, written
//!   by work queued outside the graph (one copy before each launch).
//! * A stream joins the capture by waiting for an event recorded under it (fork) and must be
//!   waited for by the origin stream before the capture ends (join), or ending fails.
//! * A stream under capture may not wait for an event recorded outside it.
//! * Kernel arguments are fixed at capture: a graph replays the same shapes and addresses.
//!   The graph keeps every allocation its work touches alive.
//!
//! Under emulation a replay runs each captured stream's work on a stream of its own, with the
//! captured waits between them, so a missing dependency shows up as a race, as on a GPU.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::CudaGraph;

use super::buffer::Allocation;
use super::emu_graph::CapturedGraph;
use super::NodeKind;
use super::{Backend, Stream, StreamBackend};
use crate::error::{DeviceError, Result};

/// The work nodes of a captured graph by kind (`Graph::node_counts`): on CUDA a GEMM is as many
/// kernel nodes as cuBLAS launches; emulated, one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphNodes {
    /// Kernel launches.
    pub kernels: usize,
    /// Device-to-device copies.
    pub copies: usize,
    /// Memsets.
    pub fills: usize,
}

/// A captured, instantiated graph; replays on the stream it was captured from.
pub struct Graph {
    stream: Stream,
    inner: GraphInner,
    /// Device memory the captured work addresses (CUDA; emulated work holds its own).
    _retained: Vec<Arc<Allocation>>,
}

enum GraphInner {
    Emulated {
        captured: CapturedGraph,
        /// One stream per captured stream besides the origin.
        lanes: Vec<Stream>,
    },
    Cuda(Mutex<SendGraph>),
}

/// A CUDA graph handle.
struct SendGraph(CudaGraph);

// SAFETY: the graph and its executable are driver handles usable from any thread with the
// context current (cudarc binds it on every call); the driver requires calls on one graph to
// be serialised, which the `Mutex` around this does.
unsafe impl Send for SendGraph {}

impl Stream {
    /// Captures the work `record` queues on this stream, and on the streams that join the
    /// capture through its events, into a [`Graph`] instead of running it. The capture ends
    /// when `record` returns, whatever it returns; an error from `record` is passed on and
    /// no graph is made. See the [`graph`](crate::device::graph) rules.
    pub fn capture<R, E>(
        &self,
        record: impl FnOnce() -> std::result::Result<R, E>,
    ) -> std::result::Result<(Graph, R), E>
    where
        E: From<DeviceError>,
    {
        // Held until the capture has ended (dropped after `EndOnUnwind` on unwind): captures
        // from other threads on this device wait for it.
        let _device_capture = self.device().lock_capture()?;
        match (self.backend(), self.device().backend()) {
            (StreamBackend::Emulated(s), Backend::Emulated(dev)) => {
                dev.begin_capture(s.id())?;
                if let Err(e) = s.begin_capture() {
                    dev.end_capture();
                    return Err(e.into());
                }
                let guard = EndOnUnwind(self);
                let recorded = record();
                std::mem::forget(guard);
                let ended = s.end_capture();
                dev.end_capture();
                let value = recorded?;
                let captured = ended?;
                let lanes = (0..captured.extra_lanes())
                    .map(|_| self.device().new_stream())
                    .collect::<Result<Vec<_>>>()?;
                let graph = Graph {
                    stream: self.clone(),
                    inner: GraphInner::Emulated { captured, lanes },
                    _retained: Vec::new(),
                };
                Ok((graph, value))
            }
            (StreamBackend::Cuda(s), Backend::Cuda(dev)) => {
                dev.begin_capture()?;
                if let Err(e) = s.begin_capture() {
                    dev.end_capture();
                    return Err(e.into());
                }
                let guard = EndOnUnwind(self);
                let recorded = record();
                std::mem::forget(guard);
                let ended = s.end_capture();
                let retained = dev.end_capture();
                let value = recorded?;
                let graph = ended?;
                let graph = Graph {
                    stream: self.clone(),
                    inner: GraphInner::Cuda(Mutex::new(SendGraph(graph))),
                    _retained: retained,
                };
                Ok((graph, value))
            }
            _ => Err(DeviceError::DeviceMismatch {
                arg: "stream",
                expected: "a stream of its own device".into(),
                found: self.device().describe(),
            }
            .into()),
        }
    }

    /// Fails with [`DeviceError::NotCapturable`] if this stream is under capture.
    pub(crate) fn refuse_capture(&self, op: &'static str, reason: &'static str) -> Result<()> {
        let capturing = match (self.backend(), self.device().backend()) {
            (StreamBackend::Emulated(s), _) => s.capturing().is_some(),
            // Querying the driver only while some capture is in progress keeps eager work cheap.
            (StreamBackend::Cuda(s), Backend::Cuda(dev)) => {
                dev.capture_in_progress() && s.is_capturing()?
            }
            _ => false,
        };
        if capturing {
            Err(DeviceError::NotCapturable { op, reason })
        } else {
            Ok(())
        }
    }

    /// On CUDA, hands `allocs` to the graph being captured, if any (emulated work keeps its
    /// allocations itself).
    pub(crate) fn retain_if_capturing<'a>(
        &self,
        allocs: impl IntoIterator<Item = &'a Arc<Allocation>>,
    ) {
        if let Backend::Cuda(dev) = self.device().backend() {
            dev.retain_if_capturing(allocs);
        }
    }
}

/// Ends the capture on `.0` if the recording closure unwinds, so that neither the stream nor
/// the device stays capturing after a panic; forgotten on the normal path.
struct EndOnUnwind<'a>(&'a Stream);

impl Drop for EndOnUnwind<'_> {
    fn drop(&mut self) {
        // Errors are moot here: the capture is being abandoned.
        match (self.0.backend(), self.0.device().backend()) {
            (StreamBackend::Emulated(s), Backend::Emulated(dev)) => {
                drop(s.end_capture());
                dev.end_capture();
            }
            (StreamBackend::Cuda(s), Backend::Cuda(dev)) => {
                drop(s.end_capture());
                dev.end_capture();
            }
            _ => {}
        }
    }
}

impl Graph {
    /// Queues one run of the graph on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        match (&self.inner, self.stream.backend()) {
            (GraphInner::Emulated { captured, lanes }, StreamBackend::Emulated(origin)) => {
                let lanes: Vec<_> = lanes
                    .iter()
                    .filter_map(|l| match l.backend() {
                        StreamBackend::Emulated(e) => Some(e),
                        StreamBackend::Cuda(_) => None,
                    })
                    .collect();
                captured.replay(origin, &lanes)
            }
            (GraphInner::Cuda(graph), StreamBackend::Cuda(_)) => {
                self.stream
                    .refuse_capture("launching a graph", "graphs are not nested")?;
                graph
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
                    .launch()
                    .map_err(DeviceError::driver("cuGraphLaunch"))
            }
            _ => Err(DeviceError::Capture {
                reason: "graph and stream backends differ".into(),
            }),
        }
    }

    /// Work nodes of the graph: kernels, GEMMs, copies and fills (each GEMM may be several
    /// kernels on CUDA, as cuBLAS chooses). Cross-stream waits are edges, not nodes.
    pub fn nodes(&self) -> Result<usize> {
        let n = self.node_counts()?;
        Ok(n.kernels + n.copies + n.fills)
    }

    /// The graph's work nodes by kind: what a replay launches.
    pub fn node_counts(&self) -> Result<GraphNodes> {
        match &self.inner {
            GraphInner::Emulated { captured, .. } => Ok(GraphNodes {
                kernels: captured.work_nodes(NodeKind::Kernel),
                copies: captured.work_nodes(NodeKind::Copy),
                fills: captured.work_nodes(NodeKind::Fill),
            }),
            GraphInner::Cuda(graph) => {
                use cudarc::driver::sys::{self as cu, CUgraphNodeType as Kind};
                let graph = graph.lock().unwrap_or_else(PoisonError::into_inner);
                let mut count = 0usize;
                // SAFETY: the graph handle is live (owned by `graph`, locked); a null node
                // array asks only for the count.
                unsafe {
                    cu::cuGraphGetNodes(graph.0.cu_graph(), std::ptr::null_mut(), &mut count)
                }
                .result()
                .map_err(DeviceError::driver("cuGraphGetNodes"))?;
                let mut nodes: Vec<cu::CUgraphNode> = vec![std::ptr::null_mut(); count];
                // SAFETY: `nodes` has room for `count` handles, the number just reported for
                // this (locked, unchanged) graph.
                unsafe { cu::cuGraphGetNodes(graph.0.cu_graph(), nodes.as_mut_ptr(), &mut count) }
                    .result()
                    .map_err(DeviceError::driver("cuGraphGetNodes"))?;
                let mut out = GraphNodes::default();
                for &node in nodes.iter().take(count) {
                    let mut kind = Kind::CU_GRAPH_NODE_TYPE_EMPTY;
                    // SAFETY: `node` belongs to the live graph; `kind` is a valid out pointer.
                    unsafe { cu::cuGraphNodeGetType(node, &mut kind) }
                        .result()
                        .map_err(DeviceError::driver("cuGraphNodeGetType"))?;
                    match kind {
                        Kind::CU_GRAPH_NODE_TYPE_KERNEL => out.kernels += 1,
                        Kind::CU_GRAPH_NODE_TYPE_MEMCPY => out.copies += 1,
                        Kind::CU_GRAPH_NODE_TYPE_MEMSET => out.fills += 1,
                        // Event records/waits and empty nodes are ordering, not work.
                        _ => {}
                    }
                }
                Ok(out)
            }
        }
    }

    /// The stream the graph was captured from and replays on.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Graph");
        d.field("stream", &self.stream);
        if let GraphInner::Emulated { captured, lanes } = &self.inner {
            d.field("steps", &captured.steps())
                .field("streams", &(lanes.len() + 1));
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, DeviceBuffer};
    use crate::ops::axpby::axpby;

    fn setup() -> (Device, Stream) {
        let device = Device::emulated();
        let stream = device.new_stream().unwrap();
        (device, stream)
    }

    /// Captures on `a`: fork to `b`, which copies `src` into `mid` and adds `src` to it `adds`
    /// times; join; `out += mid` on `a`.
    fn capture_fork_join(
        [a, b]: [&Stream; 2],
        src: &DeviceBuffer<f32>,
        mid: &mut DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
        adds: usize,
    ) -> Result<Graph> {
        let (graph, ()) = a.capture(|| -> Result<()> {
            let fork = a.record_event()?;
            b.wait_event(&fork)?;
            mid.copy_from(b, src)?;
            for _ in 0..adds {
                axpby(b, 1.0, src, 1.0, mid)?;
            }
            let join = b.record_event()?;
            a.wait_event(&join)?;
            axpby(a, 1.0, mid, 1.0, out)
        })?;
        Ok(graph)
    }

    #[test]
    fn captured_work_runs_only_when_launched_and_rereads_device_memory() {
        let (device, stream) = setup();
        let mut x = DeviceBuffer::from_host(&stream, &[1.0f32, 2.0, 3.0]).unwrap();
        let mut y = DeviceBuffer::from_host(&stream, &[10.0f32, 20.0, 30.0]).unwrap();
        let (graph, ()) = stream
            .capture(|| axpby(&stream, 2.0, &x, 1.0, &mut y))
            .unwrap();
        assert_eq!(y.to_host(&stream).unwrap(), vec![10.0, 20.0, 30.0]);
        graph.launch().unwrap();
        assert_eq!(y.to_host(&stream).unwrap(), vec![12.0, 24.0, 36.0]);
        // New inputs written outside the graph are what the next replay reads.
        x.copy_from_host(&stream, &[-1.0, 0.5, 0.0]).unwrap();
        graph.launch().unwrap();
        graph.launch().unwrap();
        assert_eq!(y.to_host(&stream).unwrap(), vec![8.0, 26.0, 36.0]);
        device.synchronize().unwrap();
    }

    #[test]
    fn forked_streams_join_and_replay_in_order() {
        let (device, a) = setup();
        let b = device.new_stream().unwrap();
        let src = DeviceBuffer::from_host(&a, &[1.0f32, 2.0]).unwrap();
        let mut mid = DeviceBuffer::<f32>::alloc(&device, 2).unwrap();
        let mut out = DeviceBuffer::from_host(&a, &[0.0f32, 0.0]).unwrap();
        // Many kernels on the forked stream: the join must wait for all of them.
        let graph = capture_fork_join([&a, &b], &src, &mut mid, &mut out, 20).unwrap();
        for _ in 0..3 {
            graph.launch().unwrap();
        }
        assert_eq!(out.to_host(&a).unwrap(), vec![63.0, 126.0]);
        assert_eq!(graph.nodes().unwrap(), 22);
        // Both streams left the capture.
        b.synchronize().unwrap();
        assert!(format!("{graph:?}").contains("streams: 2"), "{graph:?}");
    }

    #[test]
    fn a_fork_that_never_rejoins_fails_the_capture() {
        let (device, a) = setup();
        let b = device.new_stream().unwrap();
        let src = DeviceBuffer::from_host(&a, &[1.0f32]).unwrap();
        let mut dst = DeviceBuffer::<f32>::alloc(&device, 1).unwrap();
        // `b` reads `src` below without an event from `a`.
        a.synchronize().unwrap();
        let err = a
            .capture(|| -> Result<()> {
                b.wait_event(&a.record_event()?)?;
                dst.copy_from(&b, &src)
            })
            .unwrap_err();
        assert!(matches!(err, DeviceError::Capture { .. }), "{err}");
        assert!(err.to_string().contains("did not rejoin"), "{err}");
        // Neither stream is still capturing.
        dst.copy_from(&b, &src).unwrap();
        assert_eq!(dst.to_host(&b).unwrap(), vec![1.0]);
        a.synchronize().unwrap();
    }

    #[test]
    fn host_work_is_refused_under_capture() {
        let (device, stream) = setup();
        let other = device.new_stream().unwrap();
        let mut buf = DeviceBuffer::from_host(&stream, &[1.0f32]).unwrap();
        let outside = other.record_event().unwrap();
        type Attempt<'a> = Box<dyn FnOnce(&Stream, &mut DeviceBuffer<f32>) -> Result<()> + 'a>;
        let attempts: Vec<(&str, Attempt<'_>)> = vec![
            (
                "copy from host",
                Box::new(|s, b| b.copy_from_host(s, &[2.0])),
            ),
            ("copy to host", Box::new(|s, b| b.to_host(s).map(drop))),
            ("host fn", Box::new(|s, _| s.host_fn(|| {}))),
            ("synchronize", Box::new(|s, _| s.synchronize())),
            (
                "timed event",
                Box::new(|s, _| s.record_timed_event().map(drop)),
            ),
            ("outside event", Box::new(|s, _| s.wait_event(&outside))),
            (
                "host wait on a captured event",
                Box::new(|s, _| s.record_event()?.synchronize()),
            ),
        ];
        for (what, attempt) in attempts {
            let err = stream.capture(|| attempt(&stream, &mut buf)).unwrap_err();
            assert!(
                matches!(
                    err,
                    DeviceError::NotCapturable { .. } | DeviceError::Capture { .. }
                ),
                "{what}: {err}"
            );
            // The failed capture left the stream usable.
            assert_eq!(buf.to_host(&stream).unwrap(), vec![1.0], "{what}");
        }
    }

    #[test]
    fn a_panic_while_recording_ends_the_capture() {
        let (device, a) = setup();
        let b = device.new_stream().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = a.capture(|| -> Result<()> {
                b.wait_event(&a.record_event()?)?;
                panic!("recording failed");
            });
        }));
        assert!(caught.is_err());
        // Both streams run work again, and a new capture can start.
        let x = DeviceBuffer::from_host(&a, &[3.0f32]).unwrap();
        assert_eq!(x.to_host(&a).unwrap(), vec![3.0]);
        b.synchronize().unwrap();
        let (graph, ()) = a.capture(|| Ok::<(), DeviceError>(())).unwrap();
        graph.launch().unwrap();
    }

    #[test]
    fn events_of_an_ended_capture_cannot_be_joined() {
        let (device, a) = setup();
        let b = device.new_stream().unwrap();
        let mut stale = None;
        let (_graph, ()) = a
            .capture(|| -> Result<()> {
                stale = Some(a.record_event()?);
                Ok(())
            })
            .unwrap();
        let err = b.wait_event(&stale.unwrap()).unwrap_err();
        assert!(err.to_string().contains("has ended"), "{err}");
        b.synchronize().unwrap();
    }

    #[test]
    fn nested_capture_is_refused() {
        let (_, stream) = setup();
        let err = stream
            .capture(|| stream.capture(|| Ok::<(), DeviceError>(())).map(drop))
            .unwrap_err();
        assert!(err.to_string().contains("already capturing"), "{err}");
    }

    /// On a machine with a GPU: the same fork/join capture through the driver, replayed, and a
    /// host copy refused under capture (ignored elsewhere, so no run passes without checking).
    #[test]
    #[ignore = "needs a CUDA GPU: the GPU check runs it with --include-ignored"]
    fn cuda_graph_capture_forks_joins_and_replays() {
        let device = Device::cuda(0).expect("this test needs a CUDA GPU");
        let a = device.new_stream().unwrap();
        let b = device.new_stream().unwrap();
        let src = DeviceBuffer::from_host(&a, &[1.0f32, 2.0]).unwrap();
        let mut mid = DeviceBuffer::<f32>::alloc(&device, 2).unwrap();
        let mut out = DeviceBuffer::from_host(&a, &[0.0f32, 0.0]).unwrap();
        // Warm-up outside any capture: loads the module.
        axpby(&a, 0.0, &src, 1.0, &mut out).unwrap();
        a.synchronize().unwrap();
        let graph = capture_fork_join([&a, &b], &src, &mut mid, &mut out, 1).unwrap();
        for _ in 0..3 {
            graph.launch().unwrap();
        }
        assert_eq!(out.to_host(&a).unwrap(), vec![6.0, 12.0]);
        let err = a
            .capture(|| out.copy_from_host(&a, &[1.0, 1.0]))
            .unwrap_err();
        assert!(matches!(err, DeviceError::NotCapturable { .. }), "{err}");
        // The failed capture ended: the stream works eagerly again.
        out.copy_from_host(&a, &[1.0, 1.0]).unwrap();
        assert_eq!(out.to_host(&a).unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn a_graph_keeps_its_buffers_alive() {
        let (device, stream) = setup();
        let src = DeviceBuffer::from_host(&stream, &[4.0f32, 5.0]).unwrap();
        let mut dst = DeviceBuffer::<f32>::alloc(&device, 2).unwrap();
        let (graph, ()) = stream.capture(|| dst.copy_from(&stream, &src)).unwrap();
        drop(src);
        graph.launch().unwrap();
        assert_eq!(dst.to_host(&stream).unwrap(), vec![4.0, 5.0]);
    }
}
