//! The commands `kv` answers, with Redis's replies and error texts: PING, ECHO, GET, SET (EX,
//! PX, NX, XX), DEL, EXISTS, INCR, INCRBY, DECR, APPEND, STRLEN, MGET, MSET, DBSIZE,
//! FLUSHALL, SELECT 0, CONFIG GET (what `redis-benchmark` asks), QUIT and SHUTDOWN.
//! Multi-key commands take each key's shard in turn: each key is atomic, the command as a
//! whole is not (Redis runs one command at a time; `kv` runs one per thread).

use alloc::format;
use alloc::vec::Vec;

use super::resp::reply;
use super::store::{Change, Entry, Shard, Store, StoreError};
use crate::runtime::Lock;

/// The commands, for counting requests by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Ping,
    Echo,
    Get,
    Set,
    Del,
    Exists,
    Incr,
    IncrBy,
    Decr,
    Append,
    Strlen,
    MGet,
    MSet,
    DbSize,
    FlushAll,
    Select,
    Config,
    Quit,
    Shutdown,
    /// A command `kv` does not know.
    Unknown,
}

impl Command {
    /// Every command, in the order of [`Command::index`].
    pub const ALL: [Command; 20] = [
        Self::Ping,
        Self::Echo,
        Self::Get,
        Self::Set,
        Self::Del,
        Self::Exists,
        Self::Incr,
        Self::IncrBy,
        Self::Decr,
        Self::Append,
        Self::Strlen,
        Self::MGet,
        Self::MSet,
        Self::DbSize,
        Self::FlushAll,
        Self::Select,
        Self::Config,
        Self::Quit,
        Self::Shutdown,
        Self::Unknown,
    ];

    /// Its name as clients send it (lower case), or "unknown".
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Echo => "echo",
            Self::Get => "get",
            Self::Set => "set",
            Self::Del => "del",
            Self::Exists => "exists",
            Self::Incr => "incr",
            Self::IncrBy => "incrby",
            Self::Decr => "decr",
            Self::Append => "append",
            Self::Strlen => "strlen",
            Self::MGet => "mget",
            Self::MSet => "mset",
            Self::DbSize => "dbsize",
            Self::FlushAll => "flushall",
            Self::Select => "select",
            Self::Config => "config",
            Self::Quit => "quit",
            Self::Shutdown => "shutdown",
            Self::Unknown => "unknown",
        }
    }

    /// Its position in [`Command::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&command| command == self).expect("ALL lists every command")
    }

    fn named(word: &[u8]) -> Command {
        Self::ALL[..Self::ALL.len() - 1]
            .iter()
            .copied()
            .find(|command| command.name().as_bytes().eq_ignore_ascii_case(word))
            .unwrap_or(Self::Unknown)
    }

    /// Whether `args` (the words after the name) is a count this command takes.
    fn takes(self, args: usize) -> bool {
        match self {
            Self::Ping => args <= 1,
            Self::Echo | Self::Get | Self::Incr | Self::Decr | Self::Strlen | Self::Select => args == 1,
            Self::Set => args >= 2,
            Self::Del | Self::Exists | Self::MGet | Self::Config => args >= 1,
            Self::IncrBy | Self::Append => args == 2,
            Self::MSet => args >= 2 && args.is_multiple_of(2),
            Self::DbSize | Self::Quit => args == 0,
            Self::FlushAll | Self::Shutdown => args <= 1,
            Self::Unknown => true,
        }
    }
}

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// QUIT: the reply goes out, then the connection closes.
    Close,
    /// SHUTDOWN: the server stops.
    Shutdown,
}

/// Executes the request `words` on `store` at `now_ms`, appending the reply to `out`.
pub fn execute<L: Lock<Shard>>(store: &Store<L>, words: &[&[u8]], now_ms: u64, out: &mut Vec<u8>) -> (Command, After) {
    let Some((&name, args)) = words.split_first() else {
        return (Command::Unknown, After::Continue);
    };
    let command = Command::named(name);
    if command == Command::Unknown {
        let name = core::str::from_utf8(name).unwrap_or("?");
        reply::error(out, &format!("ERR unknown command '{name}', with args beginning with: "));
        return (command, After::Continue);
    }
    if !command.takes(args.len()) {
        reply::error(out, &format!("ERR wrong number of arguments for '{}' command", command.name()));
        return (command, After::Continue);
    }
    let after = match command {
        Command::Quit => After::Close,
        Command::Shutdown => After::Shutdown,
        _ => After::Continue,
    };
    if let Err(error) = run(command, store, args, now_ms, out) {
        reply::error(out, error.text());
    }
    (command, after)
}

/// An error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Syntax,
    NotInteger,
    Overflow,
    BadExpire,
    BadDb,
    Store(StoreError),
}

impl Refusal {
    fn text(self) -> &'static str {
        match self {
            Self::Syntax => "ERR syntax error",
            Self::NotInteger => "ERR value is not an integer or out of range",
            Self::Overflow => "ERR increment or decrement would overflow",
            Self::BadExpire => "ERR invalid expire time in 'set' command",
            Self::BadDb => "ERR DB index is out of range",
            Self::Store(StoreError::TooLarge) => "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
            Self::Store(StoreError::OutOfMemory) => "OOM command not allowed when used memory > 'maxmemory'.",
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        Refusal::Store(error)
    }
}

fn run<L: Lock<Shard>>(
    command: Command,
    store: &Store<L>,
    args: &[&[u8]],
    now: u64,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let read = |key: &[u8]| store.update(key, now, |entry| (Change::Keep, entry.map(|entry| entry.value.clone())));
    match command {
        Command::Ping => match args.first() {
            Some(message) => reply::bulk(out, Some(message)),
            None => reply::simple(out, "PONG"),
        },
        Command::Echo => reply::bulk(out, Some(args[0])),
        Command::Get => reply::bulk(out, read(args[0])?.as_deref()),
        Command::Set => set(store, args, now, out)?,
        Command::Del | Command::Exists => {
            let mut count = 0;
            for key in args {
                let change = || if command == Command::Del { Change::Delete } else { Change::Keep };
                count += i64::from(store.update(key, now, |entry| (change(), entry.is_some()))?);
            }
            reply::integer(out, count);
        }
        Command::Incr => reply::integer(out, add(store, args[0], 1, now)?),
        Command::Decr => reply::integer(out, add(store, args[0], -1, now)?),
        Command::IncrBy => reply::integer(out, add(store, args[0], integer(args[1])?, now)?),
        Command::Append => {
            let len = store.update(args[0], now, |entry| {
                let mut value = entry.map(|entry| entry.value.clone()).unwrap_or_default();
                value.extend_from_slice(args[1]);
                let len = value.len();
                (Change::Put(Entry { value, expires_ms: entry.and_then(|entry| entry.expires_ms) }), len)
            })?;
            reply::integer(out, len as i64);
        }
        Command::Strlen => {
            let len = store.update(args[0], now, |entry| (Change::Keep, entry.map_or(0, |entry| entry.value.len())))?;
            reply::integer(out, len as i64);
        }
        Command::MGet => {
            reply::array(out, args.len());
            for key in args {
                reply::bulk(out, read(key)?.as_deref());
            }
        }
        Command::MSet => {
            for pair in args.chunks(2) {
                let entry = Entry { value: pair[1].to_vec(), expires_ms: None };
                store.update(pair[0], now, |_| (Change::Put(entry), ()))?;
            }
            reply::simple(out, "OK");
        }
        Command::DbSize => reply::integer(out, store.len() as i64),
        Command::FlushAll => match args.first() {
            Some(mode) if !mode.eq_ignore_ascii_case(b"sync") && !mode.eq_ignore_ascii_case(b"async") => {
                return Err(Refusal::Syntax);
            }
            _ => {
                store.clear();
                reply::simple(out, "OK");
            }
        },
        Command::Select if args[0] == b"0" => reply::simple(out, "OK"),
        Command::Select => return Err(Refusal::BadDb),
        Command::Config => config(args, out)?,
        Command::Quit => reply::simple(out, "OK"),
        Command::Shutdown | Command::Unknown => {}
    }
    Ok(())
}

/// SET key value [EX seconds | PX milliseconds] [NX | XX]
fn set<L: Lock<Shard>>(store: &Store<L>, args: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Result<(), Refusal> {
    let (key, value) = (args[0], args[1]);
    let mut expires_ms = None;
    let (mut nx, mut xx) = (false, false);
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        let unit_ms = match option {
            o if o.eq_ignore_ascii_case(b"nx") && !xx => {
                nx = true;
                continue;
            }
            o if o.eq_ignore_ascii_case(b"xx") && !nx => {
                xx = true;
                continue;
            }
            o if o.eq_ignore_ascii_case(b"ex") => 1000,
            o if o.eq_ignore_ascii_case(b"px") => 1,
            _ => return Err(Refusal::Syntax),
        };
        if expires_ms.is_some() {
            return Err(Refusal::Syntax);
        }
        let amount = integer(options.next().ok_or(Refusal::Syntax)?)?;
        let ms = u64::try_from(amount).ok().filter(|&n| n > 0).and_then(|n| n.checked_mul(unit_ms));
        expires_ms = Some(ms.and_then(|ms| now.checked_add(ms)).ok_or(Refusal::BadExpire)?);
    }
    let done = store.update(key, now, |entry| {
        if (nx && entry.is_some()) || (xx && entry.is_none()) {
            (Change::Keep, false)
        } else {
            (Change::Put(Entry { value: value.to_vec(), expires_ms }), true)
        }
    })?;
    if done {
        reply::simple(out, "OK")
    } else {
        reply::bulk(out, None)
    }
    Ok(())
}

/// Adds `delta` to the integer at `key` (0 if absent), keeping its expiry.
fn add<L: Lock<Shard>>(store: &Store<L>, key: &[u8], delta: i64, now: u64) -> Result<i64, Refusal> {
    store.update(key, now, |entry| {
        let current = entry.map_or(Ok(0), |entry| integer(&entry.value));
        match current.and_then(|value| value.checked_add(delta).ok_or(Refusal::Overflow)) {
            Ok(value) => {
                let entry =
                    Entry { value: format!("{value}").into_bytes(), expires_ms: entry.and_then(|e| e.expires_ms) };
                (Change::Put(entry), Ok(value))
            }
            Err(refusal) => (Change::Keep, Err(refusal)),
        }
    })?
}

/// A decimal i64 as Redis reads one: optional '-', digits, no spaces, no leading '+'.
fn integer(text: &[u8]) -> Result<i64, Refusal> {
    core::str::from_utf8(text)
        .ok()
        .filter(|text| !text.starts_with('+') && !text.is_empty() && text.len() <= 20)
        .and_then(|text| text.parse().ok())
        .ok_or(Refusal::NotInteger)
}

/// CONFIG GET name...: the answers `redis-benchmark` looks for (`save`, `appendonly`), an
/// empty list for the rest; other CONFIG subcommands are refused.
fn config(args: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Refusal> {
    const KNOWN: [(&str, &str); 2] = [("save", ""), ("appendonly", "no")];
    if !args[0].eq_ignore_ascii_case(b"get") || args.len() < 2 {
        return Err(Refusal::Syntax);
    }
    let found: Vec<(&str, &str)> = KNOWN
        .iter()
        .copied()
        .filter(|(name, _)| args[1..].iter().any(|pattern| pattern.eq_ignore_ascii_case(name.as_bytes())))
        .collect();
    reply::array(out, 2 * found.len());
    for (name, value) in found {
        reply::bulk(out, Some(name.as_bytes()));
        reply::bulk(out, Some(value.as_bytes()));
    }
    Ok(())
}
