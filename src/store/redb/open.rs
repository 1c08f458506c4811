//! Opening the file: refusing what is not a parlor store (before redb
//! touches it), turning redb's open errors into ones that name the file,
//! and creating or checking the tables.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use ::redb::{Database, DatabaseError, ReadableTable, StorageError, TableHandle};

use super::schema::{
    FORMAT_V1, FORMAT_V2, FORMAT_VERSION, JOURNAL, MESSAGES, META, META_FORMAT, META_NEXT_ROOM,
    READ_MARKERS, REDB_MAGIC, ROOMS,
};

/// Why the store cannot be opened; each names the file or dir.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data dir {}: {source}", dir.display())]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is already open in another process (is another parlor running on this data dir?)", path.display())]
    AlreadyOpen { path: PathBuf },
    #[error("{} is not a parlor store ({why}); refusing to touch it", path.display())]
    Foreign { path: PathBuf, why: String },
    #[error("{} is corrupt: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{} has store format {found:?}; this parlor reads formats {FORMAT_V1} to {FORMAT_VERSION}", path.display())]
    Format { path: PathBuf, found: Option<u64> },
    #[error("cannot open {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Redb {
        path: PathBuf,
        source: ::redb::Error,
    },
    #[error("cannot start the store sync thread: {0}")]
    Thread(std::io::Error),
}

/// Refuses a non-empty file that is not a redb database, before redb sees it.
pub fn refuse_foreign_file(path: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let mut head = Vec::with_capacity(REDB_MAGIC.len());
    (&mut file)
        .take(REDB_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    if head.is_empty() || head == REDB_MAGIC {
        return Ok(());
    }
    Err(OpenError::Foreign {
        path: path.to_owned(),
        why: "not a redb database".into(),
    })
}

/// Opens the database, containing a panic of redb on a damaged file.
pub fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, OpenError> {
    let opened =
        std::panic::catch_unwind(|| Database::builder().set_cache_size(cache_bytes).create(path));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(OpenError::Corrupt {
            path: path.to_owned(),
            why: format!(
                "redb panicked while opening it: {}",
                crate::store::panic_message(&*panic)
            ),
        }),
    }
}

fn open_error(path: &Path, e: DatabaseError) -> OpenError {
    let path = path.to_owned();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            OpenError::AlreadyOpen { path }
        }
        DatabaseError::UpgradeRequired(v) => OpenError::Corrupt {
            path,
            why: format!("an old redb file format ({v}) that must be upgraded"),
        },
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            OpenError::Foreign {
                path,
                why: format!("not a valid redb database: {io}"),
            }
        }
        DatabaseError::Storage(StorageError::Corrupted(why)) => OpenError::Corrupt { path, why },
        DatabaseError::Storage(StorageError::Io(source)) => OpenError::Io { path, source },
        other => OpenError::Redb {
            path,
            source: other.into(),
        },
    }
}

/// Checks that the file is a parlor store (or an empty database, which it
/// makes one) and creates the tables; a store of an earlier format is
/// upgraded (`FORMAT_VERSION`).
pub fn init_schema(db: &Database, path: &Path) -> Result<(), OpenError> {
    let redb = |e: ::redb::Error| OpenError::Redb {
        path: path.to_owned(),
        source: e,
    };
    let txn = db.begin_write().map_err(|e| redb(e.into()))?;
    let tables: Vec<String> = txn
        .list_tables()
        .map_err(|e| redb(e.into()))?
        .map(|t| t.name().to_string())
        .collect();
    let ours = [
        META.name(),
        ROOMS.name(),
        MESSAGES.name(),
        READ_MARKERS.name(),
        JOURNAL.name(),
    ];
    let foreign = tables.iter().any(|t| !ours.contains(&t.as_str()));
    let has_meta = tables.iter().any(|t| t == META.name());
    if foreign || (!tables.is_empty() && !has_meta) {
        let _ = txn.abort();
        return Err(OpenError::Foreign {
            path: path.to_owned(),
            why: format!("a redb database with tables {}", tables.join(", ")),
        });
    }
    if has_meta {
        let meta = txn.open_table(META).map_err(|e| redb(e.into()))?;
        let version = meta
            .get(META_FORMAT)
            .map_err(|e| redb(e.into()))?
            .map(|v| v.value());
        drop(meta);
        match version {
            Some(FORMAT_VERSION) => {
                let _ = txn.abort();
                return Ok(());
            }
            Some(FORMAT_V1 | FORMAT_V2) => {
                // Formats 1 and 2 stored runs of one only, which read the
                // same in format 3. Every message of a format 1 store is
                // in the messages table: an empty journal beside it is the
                // same log.
                let mut meta = txn.open_table(META).map_err(|e| redb(e.into()))?;
                meta.insert(META_FORMAT, FORMAT_VERSION)
                    .map_err(|e| redb(e.into()))?;
                drop(meta);
                txn.open_table(JOURNAL).map_err(|e| redb(e.into()))?;
                return txn.commit().map_err(|e| redb(e.into()));
            }
            found => {
                let _ = txn.abort();
                return Err(OpenError::Format {
                    path: path.to_owned(),
                    found,
                });
            }
        }
    }
    {
        let mut meta = txn.open_table(META).map_err(|e| redb(e.into()))?;
        meta.insert(META_FORMAT, FORMAT_VERSION)
            .map_err(|e| redb(e.into()))?;
        meta.insert(META_NEXT_ROOM, 1).map_err(|e| redb(e.into()))?;
        txn.open_table(ROOMS).map_err(|e| redb(e.into()))?;
        txn.open_table(MESSAGES).map_err(|e| redb(e.into()))?;
        txn.open_table(JOURNAL).map_err(|e| redb(e.into()))?;
    }
    txn.commit().map_err(|e| redb(e.into()))
}
