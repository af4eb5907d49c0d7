//! `xl create`'s file upload: the client announces each file's length and
//! SHA-256 in [`crate::Request::Create`], then sends the bytes in chunks.
//! [`Upload`] is the server's bookkeeping for that (in order, in bounds,
//! complete, digest right), so the hypervisor only stores bytes; the
//! client uses [`FileHasher`] to compute the digests.

use crate::message::{ErrorCode, ErrorReply, FileMeta};
use crate::MAX_CHUNK;
use alloc::format;
use alloc::vec::Vec;
use sha2::{Digest, Sha256};

/// SHA-256, fed piece by piece.
#[derive(Clone, Debug, Default)]
pub struct FileHasher(Sha256);

impl FileHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }

    pub fn digest(data: &[u8]) -> [u8; 32] {
        let mut h = FileHasher::new();
        h.update(data);
        h.finish()
    }
}

/// The files of one `Create`, as their chunks arrive.
#[derive(Debug)]
pub struct Upload {
    files: Vec<FileMeta>,
    received: Vec<u64>,
    hashers: Vec<FileHasher>,
}

fn bad(message: alloc::string::String) -> ErrorReply {
    ErrorReply::new(ErrorCode::BadRequest, message)
}

impl Upload {
    /// Most files one domain's configuration can name (kernel, ramdisk,
    /// firmware, and room to grow).
    pub const MAX_FILES: usize = 8;

    /// Checks the announced files: few, named, distinct, and together at
    /// most `limit_bytes` (what the hypervisor is willing to hold).
    pub fn new(files: Vec<FileMeta>, limit_bytes: u64) -> Result<Self, ErrorReply> {
        if files.len() > Self::MAX_FILES {
            return Err(bad(format!("{} files announced; at most {}", files.len(), Self::MAX_FILES)));
        }
        let mut total: u64 = 0;
        for (i, f) in files.iter().enumerate() {
            if f.name.is_empty() {
                return Err(bad(format!("file #{i} has no name")));
            }
            if files[..i].iter().any(|g| g.name == f.name) {
                return Err(bad(format!("file '{}' announced twice", f.name)));
            }
            total = total.saturating_add(f.len);
        }
        if total > limit_bytes {
            let msg = format!("the files take {} MiB; at most {} MiB can be received", total >> 20, limit_bytes >> 20);
            return Err(ErrorReply::new(ErrorCode::NoMemory, msg));
        }
        let n = files.len();
        Ok(Upload { files, received: alloc::vec![0; n], hashers: alloc::vec![FileHasher::new(); n] })
    }

    pub fn files(&self) -> &[FileMeta] {
        &self.files
    }

    /// Checks one chunk and counts it; on `Ok` the caller stores `data` at
    /// `offset` in file `index`. Chunks of a file must come in order.
    pub fn accept(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), ErrorReply> {
        let i = index as usize;
        let Some(file) = self.files.get(i) else {
            return Err(bad(format!("chunk for file #{index}, but only {} announced", self.files.len())));
        };
        if data.len() > MAX_CHUNK {
            return Err(bad(format!("chunk of {} bytes; at most {MAX_CHUNK}", data.len())));
        }
        if offset != self.received[i] {
            return Err(bad(format!("chunk of '{}' at offset {offset}, expected {}", file.name, self.received[i])));
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > file.len {
            return Err(bad(format!("chunk of '{}' ends at {end}, past its length {}", file.name, file.len)));
        }
        self.received[i] = end;
        self.hashers[i].update(data);
        Ok(())
    }

    /// Every file complete with the announced digest.
    pub fn finish(self) -> Result<Vec<FileMeta>, ErrorReply> {
        for ((file, got), hasher) in self.files.iter().zip(&self.received).zip(self.hashers) {
            if *got != file.len {
                return Err(bad(format!("'{}' is incomplete: {got} of {} bytes", file.name, file.len)));
            }
            if hasher.finish() != file.sha256 {
                return Err(bad(format!("'{}' arrived damaged: its SHA-256 differs", file.name)));
            }
        }
        Ok(self.files)
    }
}
