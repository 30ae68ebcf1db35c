//! The dial plan (sans-IO): routes matched in order on the Request-URI user part
//! (percent-decoded first, RFC 3261 19.1.2, so `%23` is `#`) by prefix, regular
//! expression and/or domain; number conversion per route; emergency numbers, which are
//! never converted and always take the emergency route. The proxy then tries the
//! route's trunks in order or by weight (see `resolve.rs` for the targets of one trunk).

use serde::{Deserialize, Serialize};

/// Numbers that are emergency numbers everywhere (in addition to configured ones).
pub const EMERGENCY: [&str; 2] = ["112", "911"];

/// A number conversion rule: a number that starts with `prefix` followed by exactly
/// `digits` digits (any number of characters when `digits` is absent) gets `prefix`
/// replaced by `to`. E.g. `{prefix = "0", digits = 10, to = "+49"}`: 0301234567 ->
/// +49301234567.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    pub prefix: String,
    #[serde(default)]
    pub digits: Option<usize>,
    pub to: String,
}

impl Convert {
    /// The converted number, if the rule applies.
    pub fn apply(&self, number: &str) -> Option<String> {
        let rest = number.strip_prefix(&self.prefix)?;
        if let Some(n) = self.digits
            && (rest.len() != n || !rest.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(format!("{}{rest}", self.to))
    }
}

/// A route: requests whose Request-URI matches go to `upstreams` (trunks), tried in order,
/// or by `weights` when given. Routes are tried by `priority`, lowest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub priority: u32,
    /// The Request-URI user part (the number dialled, percent-decoded) starts with this.
    pub prefix: Option<String>,
    /// ... and matches this regular expression.
    pub regex: Option<String>,
    /// The Request-URI host is this domain (case-insensitive).
    pub domain: Option<String>,
    /// Trunks (upstream names) to try.
    pub upstreams: Vec<String>,
    /// One weight per trunk: the first trunk is picked by weight (RFC 2782-style), the
    /// others follow as fail-over. Empty: in order.
    #[serde(default)]
    pub weights: Vec<u16>,
    /// Number conversion, first matching rule wins.
    #[serde(default)]
    pub convert: Vec<Convert>,
    #[serde(skip)]
    compiled: Option<regex::Regex>,
}

impl PartialEq for Route {
    fn eq(&self, o: &Route) -> bool {
        (&self.name, self.priority, &self.prefix, &self.regex, &self.domain, &self.upstreams, &self.weights, &self.convert)
            == (&o.name, o.priority, &o.prefix, &o.regex, &o.domain, &o.upstreams, &o.weights, &o.convert)
    }
}

/// A route definition that cannot work, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route:?}: {what}")]
pub struct RouteError {
    pub route: String,
    pub what: String,
}

impl Route {
    /// Checks and compiles a route. `trunk_exists` says whether an upstream name is known.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        priority: u32,
        prefix: Option<String>,
        regex: Option<String>,
        domain: Option<String>,
        upstreams: Vec<String>,
        weights: Vec<u16>,
        convert: Vec<Convert>,
        trunk_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Route, RouteError> {
        let err = |what: String| RouteError { route: name.to_string(), what };
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(err("name: expected 1 to 64 letters, digits, '_', '.', '-'".into()));
        }
        let compiled = match &regex {
            Some(r) => Some(
                regex::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| err(format!("regex {r:?} is not valid: {}", e.to_string().lines().last().unwrap_or("")))),
            )
            .transpose()?,
            None => None,
        };
        if let Some(p) = &prefix
            && (p.is_empty() || p.len() > 32 || !p.chars().all(|c| c.is_ascii_alphanumeric() || "+*#._-".contains(c)))
        {
            return Err(err(format!("prefix {p:?}: expected 1 to 32 of 0-9 A-Z a-z + * # . _ -")));
        }
        if let Some(d) = &domain
            && (d.is_empty() || d.len() > 253 || !d.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)))
        {
            return Err(err(format!("domain {d:?} is not a domain name")));
        }
        if upstreams.is_empty() {
            return Err(err("expected at least one upstream (trunk)".into()));
        }
        if let Some(c) = upstreams.iter().find(|u| u.starts_with(CONFERENCE)) {
            let room = &c[CONFERENCE.len()..];
            if upstreams.len() > 1 {
                return Err(err(format!("{c:?}: a conference target is the route's only target")));
            }
            if room != "*" && (room.is_empty() || room.len() > 64 || !room.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
            {
                return Err(err(format!(
                    "{c:?}: expected conference:ROOM (1 to 64 letters, digits, '_', '.', '-') or conference:* (the number dialled)"
                )));
            }
        }
        for u in upstreams.iter().filter(|u| !u.starts_with(CONFERENCE)) {
            if !trunk_exists(u) {
                return Err(err(format!("unknown upstream (trunk) {u:?}")));
            }
        }
        if !weights.is_empty() && weights.len() != upstreams.len() {
            return Err(err(format!("{} weights for {} upstreams: expected one per upstream", weights.len(), upstreams.len())));
        }
        for c in &convert {
            let ok = |s: &str| s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || "+*#".contains(c));
            if c.prefix.is_empty() || !ok(&c.prefix) || !ok(&c.to) || c.digits.is_some_and(|d| d > 32) {
                return Err(err(format!(
                    "conversion {{prefix = {:?}, to = {:?}}}: expected a non-empty prefix and a replacement of 0-9 A-Z a-z + * #, at most 32 each",
                    c.prefix, c.to
                )));
            }
        }
        Ok(Route { name: name.to_string(), priority, prefix, regex, domain, upstreams, weights, convert, compiled })
    }

    /// Re-checks a route read back from storage or built by deserialization.
    pub fn checked(self, trunk_exists: &dyn Fn(&str) -> bool) -> Result<Route, RouteError> {
        Route::new(
            &self.name,
            self.priority,
            self.prefix,
            self.regex,
            self.domain,
            self.upstreams,
            self.weights,
            self.convert,
            trunk_exists,
        )
    }

    /// `true` if a Request-URI (decoded user, host) matches.
    pub fn matches(&self, user: Option<&str>, host: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| user.is_some_and(|u| u.starts_with(p)))
            && self.compiled.as_ref().is_none_or(|r| r.is_match(user.unwrap_or("")))
            && self.domain.as_deref().is_none_or(|d| d.eq_ignore_ascii_case(host))
    }

    /// `true` if the route says anything about the number (not just the domain).
    pub fn matches_numbers(&self) -> bool {
        self.prefix.is_some() || self.regex.is_some()
    }

    /// The number after this route's conversion rules.
    pub fn convert(&self, number: &str) -> String {
        self.convert.iter().find_map(|c| c.apply(number)).unwrap_or_else(|| number.to_string())
    }
}

/// Target prefix of a route that sends calls into an SFU room as phone participants:
/// `conference:ROOM`, or `conference:*` for the room named by the (converted) number.
pub const CONFERENCE: &str = "conference:";

impl Route {
    /// The room of a conference route, given the (converted) number dialled.
    pub fn conference_room<'a>(&'a self, user: Option<&'a str>) -> Option<&'a str> {
        let room = self.upstreams.first()?.strip_prefix(CONFERENCE)?;
        if room == "*" { user } else { Some(room) }
    }
}

/// What the dial plan decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'a> {
    pub route: &'a Route,
    /// The number to send (converted, or as dialled for emergency calls).
    pub user: Option<String>,
    pub emergency: bool,
}

/// `true` if the (decoded) number is an emergency number.
pub fn is_emergency(number: &str, extra: &[String]) -> bool {
    EMERGENCY.contains(&number) || extra.iter().any(|e| e == number)
}

/// Picks the route for a request to `host` with (decoded) user part `user`. `local`: the
/// host is our own domain, where only routes about numbers (prefix/regex) apply, so local
/// users keep their calls. Emergency numbers take `emergency_route` when it is set (else
/// the first matching route) and are never converted.
pub fn decide<'a>(
    routes: &'a [Route],
    user: Option<&str>,
    host: &str,
    local: bool,
    emergency_numbers: &[String],
    emergency_route: Option<&str>,
) -> Option<Decision<'a>> {
    let emergency = user.is_some_and(|u| is_emergency(u, emergency_numbers));
    if emergency && let Some(r) = emergency_route.and_then(|n| routes.iter().find(|r| r.name == n)) {
        return Some(Decision { route: r, user: user.map(str::to_string), emergency });
    }
    let route = routes.iter().find(|r| (!local || r.matches_numbers()) && r.matches(user, host))?;
    let user = user.map(|u| if emergency { u.to_string() } else { route.convert(u) });
    Some(Decision { route, user, emergency })
}

/// Percent-encodes a user part for a SIP URI (RFC 3261 25.1 `user`: unreserved and
/// user-unreserved characters stay, `#` and the rest are escaped).
pub fn encode_user(u: &str) -> String {
    let mut s = String::with_capacity(u.len());
    for b in u.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prio: u32, prefix: Option<&str>, regex: Option<&str>, convert: Vec<Convert>) -> Route {
        Route::new(name, prio, prefix.map(Into::into), regex.map(Into::into), None, vec!["t".into()], vec![], convert, &|_| true).unwrap()
    }

    fn de() -> Convert {
        Convert { prefix: "0".into(), digits: Some(10), to: "+49".into() }
    }

    #[test]
    fn numbers_are_converted_by_the_first_matching_rule() {
        let r = route("de", 1, Some("0"), None, vec![de(), Convert { prefix: "00".into(), digits: None, to: "+".into() }]);
        assert_eq!(r.convert("03012345678"), "+493012345678");
        assert_eq!(r.convert("0301234567"), "0301234567", "9 digits after the 0: no rule");
        assert_eq!(r.convert("00441234"), "+441234", "second rule");
        assert_eq!(r.convert("030123456a7"), "030123456a7", "not all digits");
    }

    #[test]
    fn emergency_numbers_are_never_converted_and_take_the_emergency_route() {
        let conv = Convert { prefix: "1".into(), digits: None, to: "+1".into() };
        let routes = vec![route("all", 1, None, Some("^[0-9]+$"), vec![conv.clone(), de()]), route("sos", 2, Some("x"), None, vec![])];
        let d = decide(&routes, Some("112"), "edge.test", true, &[], Some("sos")).unwrap();
        assert_eq!((d.route.name.as_str(), d.user.as_deref(), d.emergency), ("sos", Some("112"), true));
        // Without an emergency route: the matching route, but unconverted.
        let d = decide(&routes, Some("112"), "edge.test", true, &[], None).unwrap();
        assert_eq!((d.route.name.as_str(), d.user.as_deref()), ("all", Some("112")));
        let d = decide(&routes, Some("110"), "edge.test", true, &["110".into()], None).unwrap();
        assert_eq!(d.user.as_deref(), Some("110"), "configured emergency number");
        let d = decide(&routes, Some("1555"), "edge.test", true, &[], None).unwrap();
        assert_eq!(d.user.as_deref(), Some("+1555"), "ordinary numbers are converted");
    }

    #[test]
    fn routes_match_by_prefix_regex_and_domain() {
        let mut d = route("d", 1, None, None, vec![]);
        d.domain = Some("carrier.test".into());
        let routes = vec![route("star", 1, Some("*72#"), None, vec![]), route("rx", 2, None, Some(r"^\+44\d{6,}$"), vec![]), d];
        assert_eq!(decide(&routes, Some("*72#200"), "x", true, &[], None).unwrap().route.name, "star");
        assert_eq!(decide(&routes, Some("+441234567"), "x", true, &[], None).unwrap().route.name, "rx");
        assert!(decide(&routes, Some("+4412"), "x", true, &[], None).is_none());
        // A domain-only route applies to other domains, never to local users.
        assert_eq!(decide(&routes, Some("bob"), "carrier.test", false, &[], None).unwrap().route.name, "d");
        assert!(decide(&routes, Some("bob"), "carrier.test", true, &[], None).is_none());
    }

    #[test]
    fn invalid_routes_are_refused_with_their_name() {
        let e = Route::new("r1", 1, None, Some("(".into()), None, vec!["t".into()], vec![], vec![], &|_| true).unwrap_err();
        assert!(e.to_string().contains("r1") && e.to_string().contains("regex"), "{e}");
        let e = Route::new("r2", 1, None, None, None, vec!["nope".into()], vec![], vec![], &|n| n == "t").unwrap_err();
        assert!(e.to_string().contains("unknown upstream") && e.to_string().contains("nope"), "{e}");
        let e = Route::new("r3", 1, None, None, None, vec!["t".into()], vec![1, 2], vec![], &|_| true).unwrap_err();
        assert!(e.to_string().contains("weights"), "{e}");
    }

    #[test]
    fn user_parts_are_encoded_back() {
        assert_eq!(encode_user("*72#200"), "*72%23200");
        assert_eq!(encode_user("+49301234"), "+49301234");
    }
}
