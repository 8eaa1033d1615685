//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir, Remove, WatchDir
//! and the CreateWatcher/GetWatcherEvents/RemoveWatcher polling trio.
//! (Being implemented.)

use std::sync::Arc;

use airlock_proto::connect::ConnectError;
use http::Request;
use hyper::body::Incoming;

use crate::http::{self as h, Resp};
use crate::rpc::RequestCtx;
use crate::Agent;

/// Polling watchers created by `CreateWatcher`, by id.
#[derive(Default)]
pub struct Watchers {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stat,
    MakeDir,
    Move,
    ListDir,
    Remove,
    WatchDir,
    CreateWatcher,
    GetWatcherEvents,
    RemoveWatcher,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Stat" => Self::Stat,
            "MakeDir" => Self::MakeDir,
            "Move" => Self::Move,
            "ListDir" => Self::ListDir,
            "Remove" => Self::Remove,
            "WatchDir" => Self::WatchDir,
            "CreateWatcher" => Self::CreateWatcher,
            "GetWatcherEvents" => Self::GetWatcherEvents,
            "RemoveWatcher" => Self::RemoveWatcher,
            _ => return None,
        })
    }

    pub fn is_stream(self) -> bool {
        matches!(self, Self::WatchDir)
    }
}

pub async fn handle(_agent: &Arc<Agent>, _m: Method, _req: Request<Incoming>, _ctx: RequestCtx) -> Resp {
    h::unary_err(&ConnectError::new(airlock_proto::connect::Code::Unimplemented, "not yet implemented"))
}
