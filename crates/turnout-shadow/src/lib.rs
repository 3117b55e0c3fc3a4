//! Shadow traffic analysis: the data plane (`turnout-proxy`) copies live exchanges and
//! mirrors them to the candidate; this crate compares what came back ([`compare()`]),
//! tells regressions from noise and sums it all up ([`Aggregator`] → [`Report`], with its
//! text and HTML renderings and the shadow [`Gate`]), writes and reads GoReplay's capture
//! format ([`goreplay`]), and replays captures ([`replay`]). The network IO is `replay`'s
//! alone (it sends recorded requests to a target); what the data plane uses does none.
//!
//! Modules:
//! - `compare`: one pair of responses → [`Difference`]s (paths and kinds);
//! - `endpoint`: method and target → `GET /items/{id}`;
//! - `aggregate`: samples → counts per endpoint and field, noise cancellation, bounded
//!   memory;
//! - `report`: the [`Report`] (JSON names from the spec), text rendering, the gate; `html`:
//!   the self-contained HTML page;
//! - [`goreplay`]: the capture file format; `http1`: raw HTTP/1.x messages to and from
//!   [`RequestCopy`] / [`ResponseCopy`];
//! - [`capture`]: a capture stream written to files (checked record by record, rotated
//!   by size), for `turnout capture`;
//! - [`replay`]: capture files sent again to a target and the answers compared, for
//!   `turnout replay`.

mod aggregate;
pub mod capture;
pub mod compare;
mod endpoint;
pub mod goreplay;
mod histogram;
mod html;
pub mod http1;
mod linediff;
pub mod replay;
mod report;
mod types;

pub use aggregate::{
    Aggregator, Counts, NoiseOptions, ERROR_FIELD, MAX_ENDPOINTS, MAX_EXAMPLES_WITH_BODIES,
    MAX_EXAMPLE_BODY, MAX_FIELDS_PER_ENDPOINT, MAX_FIELD_SETS, OTHER_ENDPOINT, OTHER_FIELD,
};
pub use compare::{compare, CompareOptions, DiffKind, Difference, DEFAULT_IGNORED_HEADERS};
pub use endpoint::endpoint;
pub use http1::{parse_request, parse_response, parse_response_to, HttpError};
pub use report::{
    EndpointReport, Example, FieldReport, Gate, LatencyHistogram, LatencyPair, Quantiles, Report,
    LATENCY_RATIO_FLOOR_MS,
};
pub use types::{Exchange, RequestCopy, ResponseCopy, Sample};
