//! `[sessions]`: a session that began on the old slot stays there through a switch until
//! the drain window ends, new sessions go to the new live slot, a forged pin counts for
//! nothing, and a rollback moves every session back at once.

use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

const PIN: &str = "turnout_pin";

async fn router(blue: &Backend, green: &Backend, drain: &str) -> Router {
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            extra: format!("[sessions]\ncookie = \"sid\"\ndrain = \"{drain}\"\n"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    router.await_healthy().await;
    router
}

async fn switch(router: &Router, to: &str) {
    let (status, body) = router.switch_to(to).await;
    assert_eq!(status, 200, "{body}");
}

/// A browser's cookies for the router: the application's session and turnout's pin.
#[derive(Clone, Debug, Default)]
struct Client {
    sid: Option<String>,
    pin: Option<String>,
    http2: bool,
}

/// One answer: the slot that served it, and the pin value it set, if any.
#[derive(Debug)]
struct Answer {
    slot: String,
    set_pin: Option<String>,
    set_cookies: Vec<String>,
}

impl Client {
    fn with_sid(sid: &str) -> Client {
        Client {
            sid: Some(sid.into()),
            ..Default::default()
        }
    }

    /// GETs `path` with the cookies it has, and keeps a pin it is given.
    async fn get(&mut self, router: &Router, path: &str) -> Answer {
        let mut cookies = Vec::new();
        if let Some(sid) = &self.sid {
            cookies.push(format!("sid={sid}"));
        }
        if let Some(pin) = &self.pin {
            cookies.push(format!("{PIN}={pin}"));
        }
        let cookie = cookies.join("; ");
        let headers: Vec<(&str, &str)> = if cookie.is_empty() {
            vec![]
        } else {
            vec![("cookie", cookie.as_str())]
        };
        let mut http = if self.http2 {
            HttpClient::http2(&router.data).await.unwrap()
        } else {
            HttpClient::http1(&router.data).await.unwrap()
        };
        let reply = http
            .request(Method::GET, path, &headers, Default::default())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let set_cookies: Vec<String> = reply
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let set_pin = set_cookies.iter().find_map(|c| {
            let value = c.strip_prefix(&format!("{PIN}="))?;
            Some(value.split(';').next().unwrap().to_owned())
        });
        if let Some(pin) = &set_pin {
            self.pin = Some(pin.clone());
        }
        if let Some(sid) = set_cookies
            .iter()
            .find_map(|c| Some(c.strip_prefix("sid=")?.split(';').next()?.to_owned()))
        {
            self.sid = Some(sid);
        }
        Answer {
            slot: reply.text(),
            set_pin,
            set_cookies,
        }
    }
}

fn slot_of(pin: &Option<String>) -> &str {
    pin.as_deref()
        .and_then(|p| p.split('.').next())
        .unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_session_stays_on_blue_through_a_switch_until_the_drain_ends() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green, "3s").await;

    // Before the switch: a session gets a pin for blue, once.
    let mut a = Client::with_sid("abc");
    let first = a.get(&router, "/").await;
    assert_eq!(first.slot, "blue");
    assert_eq!(slot_of(&first.set_pin), "blue", "{first:?}");
    let cookie = first
        .set_cookies
        .iter()
        .find(|c| c.starts_with(PIN))
        .unwrap();
    assert!(
        cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    let again = a.get(&router, "/").await;
    assert_eq!((again.slot.as_str(), &again.set_pin), ("blue", &None));
    // A session the application starts (its Set-Cookie) is pinned too, on HTTP/2 as well.
    let mut d = Client {
        http2: true,
        ..Default::default()
    };
    let login = d.get(&router, "/set-cookie?sid=d1").await;
    assert_eq!(login.slot, "blue");
    assert_eq!(slot_of(&login.set_pin), "blue", "{login:?}");
    assert_eq!(d.sid.as_deref(), Some("d1"));
    // No session, no pin.
    let anon = Client::default().get(&router, "/").await;
    assert_eq!((anon.slot.as_str(), &anon.set_pin), ("blue", &None));

    let switched = Instant::now();
    switch(&router, "green").await;

    // During the drain: the old sessions stay on blue, over either protocol.
    assert_eq!(a.get(&router, "/").await.slot, "blue");
    assert_eq!(d.get(&router, "/").await.slot, "blue");
    let mut a2 = Client {
        http2: true,
        ..a.clone()
    };
    assert_eq!(a2.get(&router, "/").await.slot, "blue");
    // A new session goes to green, and is pinned there.
    let mut b = Client::with_sid("new");
    let b1 = b.get(&router, "/").await;
    assert_eq!(b1.slot, "green");
    assert_eq!(slot_of(&b1.set_pin), "green", "{b1:?}");
    let mut b2 = Client {
        http2: true,
        ..Client::with_sid("new2")
    };
    assert_eq!(slot_of(&b2.get(&router, "/").await.set_pin), "green");
    // No session: the live slot.
    let anon = Client::default().get(&router, "/").await;
    assert_eq!((anon.slot.as_str(), &anon.set_pin), ("green", &None));
    assert!(
        switched.elapsed() < Duration::from_secs(3),
        "the checks during the drain took longer than the window: {:?}",
        switched.elapsed()
    );

    // After the drain: everyone on green; the old session is pinned to green anew.
    let r = &router;
    let moved = eventually("the old session on green", Duration::from_secs(15), || {
        let mut a = a.clone();
        async move {
            let answer = a.get(r, "/").await;
            (answer.slot == "green").then_some(answer)
        }
    })
    .await;
    assert!(
        switched.elapsed() >= Duration::from_millis(2900),
        "left blue {:?} after the switch, before the 3 s drain ended",
        switched.elapsed()
    );
    assert_eq!(slot_of(&moved.set_pin), "green", "{moved:?}");
    assert_eq!(d.get(&router, "/").await.slot, "green");
    assert_eq!(b.get(&router, "/").await.slot, "green");
    assert_eq!(Client::default().get(&router, "/").await.slot, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pin_is_ignored_and_a_rollback_ends_the_drain_at_once() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green, "10m").await;

    let mut old = Client::with_sid("old");
    assert_eq!(slot_of(&old.get(&router, "/").await.set_pin), "blue");
    switch(&router, "green").await;
    assert_eq!(old.get(&router, "/").await.slot, "blue");
    let mut new = Client::with_sid("new");
    assert_eq!(slot_of(&new.get(&router, "/").await.set_pin), "green");

    // A pin naming blue with green's signature: ignored (live slot, pinned anew there).
    let green_sig = new
        .pin
        .clone()
        .unwrap()
        .strip_prefix("green.")
        .unwrap()
        .to_owned();
    let mut forged = Client {
        pin: Some(format!("blue.{green_sig}")),
        ..Client::with_sid("forged")
    };
    let answer = forged.get(&router, "/").await;
    assert_eq!(answer.slot, "green");
    assert_eq!(slot_of(&answer.set_pin), "green", "{answer:?}");
    // Without a session cookie a forged pin gets no new one either.
    let mut bare = Client {
        pin: Some(format!("blue.{green_sig}")),
        ..Default::default()
    };
    assert_eq!(bare.get(&router, "/").await.slot, "green");

    // A rollback: everyone on blue at once, the session pinned to green included.
    let (status, body) = router.api(Method::POST, "/api/v1/rollback", None).await;
    assert_eq!(status, 200, "{body}");
    let back = new.get(&router, "/").await;
    assert_eq!(back.slot, "blue");
    assert_eq!(slot_of(&back.set_pin), "blue", "{back:?}");
    assert_eq!(old.get(&router, "/").await.slot, "blue");
    // No drain is left for green: a client still holding a green pin goes to blue.
    let mut stale = Client {
        pin: Some(format!("green.{green_sig}")),
        ..Client::with_sid("stale")
    };
    assert_eq!(stale.get(&router, "/").await.slot, "blue");
}
