//! Why an ADD got no address, as `terway_allocation_failures_total` counts it. Sources say why
//! in words (they quote the cloud's codes and messages); this reads those words with the one
//! table of cloud codes ([`crate::cloud::codes`]). Pure.

use crate::Kind;
use crate::cloud::codes;
use crate::metrics::reason;

/// The reason label for a failure of `kind` described by `text`.
pub fn reason(kind: Kind, text: &str) -> &'static str {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .collect();
    let has_code = |f: &dyn Fn(&str) -> bool| words.iter().any(|w| f(w));
    // The cloud's message for an exhausted vSwitch, and the pools' summary of blocked ones.
    if has_code(&|w| w == codes::VSWITCH_IP_NOT_ENOUGH)
        || text.contains("has not enough IpAddress")
        || text.contains("is out of addresses")
    {
        return reason::VSWITCH_EXHAUSTED;
    }
    if has_code(&|w| codes::refuses_enis(w) || codes::normalize(w) == codes::ENI_IP_QUOTA) {
        return reason::QUOTA;
    }
    if kind == Kind::Exhausted || text.contains("capacity reached") {
        return reason::CAPACITY;
    }
    if kind == Kind::Cloud || has_code(&codes::is_final) {
        return reason::CLOUD_ERROR;
    }
    reason::OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_words_are_classified() {
        for (kind, text, want) in [
            (
                Kind::TryAgain,
                "no address for 2 pod(s): every vSwitch is out of addresses: The specified \
                 VSwitch \"vsw-1\" has not enough IpAddress. (vsw-1 skipped for 300 s); add a \
                 vSwitch with free addresses to `vswitches`",
                reason::VSWITCH_EXHAUSTED,
            ),
            (
                Kind::TryAgain,
                "InvalidVSwitchId.IpNotEnough: no",
                reason::VSWITCH_EXHAUSTED,
            ),
            (
                Kind::TryAgain,
                "no address for 1 pod(s): the instance cannot attach more ENIs \
                 (EniPerInstanceLimitExceeded) and the 3 attached are full; 90 IPs in use",
                reason::QUOTA,
            ),
            (
                Kind::TryAgain,
                "no ENI for 1 pod(s): the cloud refuses another ENI: QuotaExceeded.Eni: quota \
                 (2 attached, 2 in use; next try in 30 s)",
                reason::QUOTA,
            ),
            (
                Kind::TryAgain,
                "no address for 1 pod(s): node capacity reached: 210 of 210 IPs in use",
                reason::CAPACITY,
            ),
            (
                Kind::Exhausted,
                "pod CIDR 10.0.0.0/30 has no free address (1 in use) for pod default/a",
                reason::CAPACITY,
            ),
            (
                Kind::TryAgain,
                "Forbidden.RAM: the RAM role may not CreateNetworkInterface",
                reason::CLOUD_ERROR,
            ),
            (
                Kind::TryAgain,
                "ENI eni-1 (00:16:3e:00:00:01) has no route table yet: its device has not appeared",
                reason::OTHER,
            ),
        ] {
            assert_eq!(reason(kind, text), want, "{text}");
        }
    }
}
