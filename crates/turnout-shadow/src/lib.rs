//! Shadow traffic analysis, with no network IO of its own: the data plane
//! (`turnout-proxy`) copies live exchanges and mirrors them to the candidate; this crate
//! compares what came back ([`compare()`]), tells regressions from noise and sums it all up
//! ([`Aggregator`] → [`Report`], with its text and HTML renderings and the shadow [`Gate`]),
//! and writes and reads GoReplay's capture format ([`goreplay`]).
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
//!   by size), for `turnout capture`.

mod aggregate;
pub mod capture;
pub mod compare;
mod endpoint;
pub mod goreplay;
mod histogram;
mod html;
pub mod http1;
mod linediff;
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
