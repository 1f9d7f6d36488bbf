//! The outbound half of one TCP connection, on either side of the remote
//! column of the 2x2: frames queued by publishers are written in batches, so
//! a burst of small messages costs one syscall, not one per message.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes gathered before a write is issued even though more frames wait.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes the frames of `outbound` to `socket` until every sender is gone
/// (then what is queued is written out, and the socket shut down) or `abort`
/// is cancelled (then queued frames are abandoned).
///
/// Frames waiting in the queue are coalesced into one buffer and written
/// with one call; the buffer is flushed as soon as the queue is empty, so a
/// lone message is never held back.
pub(crate) async fn write_frames(
    mut socket: OwnedWriteHalf,
    mut outbound: mpsc::Receiver<Bytes>,
    abort: CancellationToken,
    peer: SocketAddr,
) {
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    let mut frames = Vec::with_capacity(64);
    // Made once: a fresh `cancelled()` per batch would register a waiter each time.
    let aborted = abort.cancelled();
    tokio::pin!(aborted);
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut aborted => return,
            n = outbound.recv_many(&mut frames, 256) => n,
        };
        if received == 0 {
            break;
        }
        let write = async {
            for frame in frames.drain(..) {
                if batch.is_empty() && frame.len() >= BATCH_BYTES {
                    // A large frame goes out as it is, without a copy.
                    socket.write_all(&frame).await?;
                    continue;
                }
                batch.extend_from_slice(&frame);
                if batch.len() >= BATCH_BYTES {
                    socket.write_all(&batch).await?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                socket.write_all(&batch).await?;
                batch.clear();
            }
            std::io::Result::Ok(())
        };
        let written = tokio::select! {
            biased;
            _ = &mut aborted => return,
            written = write => written,
        };
        if let Err(error) = written {
            tracing::debug!(%peer, %error, "write failed; the connection is going away");
            abort.cancel();
            return;
        }
    }
    // Every sender is gone: a clean end, tell the peer.
    let _ = socket.shutdown().await;
}
