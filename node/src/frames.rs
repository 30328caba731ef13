//! Frames on a libp2p stream: a u32 big-endian length, then that many bytes. A frame longer
//! than the reader's limit is refused from its length alone, before anything is allocated
//! for it.
//!
//! Kept free of libp2p and of the rest of the node (only `futures` and std) so the fuzz
//! target `node_wire` includes this file as it is, without building the node's network
//! stack under sanitizers.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of a frame's length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut length = [0u8; LENGTH_BYTES];
    io.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes; at most {max}"),
        ));
    }
    let mut bytes = vec![0u8; length];
    io.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Writes `bytes` as one frame, if they are at most `max` bytes.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    let length = u32::try_from(bytes.len())
        .ok()
        .filter(|length| *length as usize <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes; at most {max}", bytes.len()),
            )
        })?;
    io.write_all(&length.to_be_bytes()).await?;
    io.write_all(bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_before_allocating() {
        let mut buffer = Vec::new();
        write_frame(&mut futures::io::Cursor::new(&mut buffer), b"hello", 5)
            .await
            .expect("writes");
        let mut reader = futures::io::Cursor::new(buffer);
        assert_eq!(read_frame(&mut reader, 5).await.expect("reads"), b"hello");
        // A length of 4 GiB with one byte behind it: refused from the length alone.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"x");
        let error = read_frame(&mut futures::io::Cursor::new(huge), 1 << 20)
            .await
            .expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let error = write_frame(&mut futures::io::Cursor::new(Vec::new()), b"hello", 4)
            .await
            .expect_err("too long to write");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        // A frame cut short is an error, not a short frame.
        let mut cut = 5u32.to_be_bytes().to_vec();
        cut.extend_from_slice(b"hel");
        let error = read_frame(&mut futures::io::Cursor::new(cut), 5)
            .await
            .expect_err("cut short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
