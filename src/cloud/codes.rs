//! The Alibaba Cloud error codes terway acts on, and what each means for it: one table, pure
//! (no I/O), used by the client (retries), the pools (blocking a vSwitch, backing off creates)
//! and the daemon (failing waiting pods at once).

pub const VSWITCH_IP_NOT_ENOUGH: &str = "InvalidVSwitchId.IpNotEnough";
pub const ENI_PER_INSTANCE_LIMIT: &str = "EniPerInstanceLimitExceeded";
/// An ENI has as many addresses as its instance type allows.
pub const ENI_IP_QUOTA: &str = "QuotaExceeded.PrivateIpAddress";
/// What the API also answers for a full ENI; means the same as [`ENI_IP_QUOTA`].
pub const IPV4_COUNT_EXCEEDED: &str = "InvalidOperation.Ipv4CountExceeded";
/// An ENI has as many IPv6 addresses as its instance type allows (`EniIpv6AddressQuantity`).
pub const IPV6_COUNT_EXCEEDED: &str = "InvalidOperation.Ipv6CountExceeded";
/// IPv6 is not enabled on the vSwitch (it has no IPv6 CIDR): no IPv6 address can come from it.
pub const VSWITCH_IPV6_NOT_ENABLED: &str = "InvalidVSwitch.Ipv6NotTurnOn";
/// Unassign of an address already gone: success.
pub const IP_UNASSIGNED: &str = "InvalidIp.IpUnassigned";
pub const ENI_NOT_FOUND: &str = "InvalidEniId.NotFound";
pub const SIGNATURE_NONCE_USED: &str = "SignatureNonceUsed";
/// CreateRouteEntry: the route table already has an entry for the destination.
pub const ROUTE_CIDR_DUPLICATE: &str = "InvalidCIDRBlock.Duplicate";
/// The same meaning, as some answers spell it.
pub const ROUTE_ENTRY_DUPLICATED: &str = "RouterEntryConflict.Duplicated";
/// Another operation on the same resource is under way (HTTP 403, nothing was done): the same
/// call succeeds once it is over, so it is retried in place, as upstream Terway does.
pub const OPERATION_CONFLICT: &str = "Operation.Conflict";

pub fn is_throttling(code: &str) -> bool {
    code.starts_with("Throttling")
}

/// Worth another attempt of the same call: throttling, server-side trouble, a conflicting
/// operation on the same resource (a nonce collision is ours: the next attempt signs with a
/// fresh nonce). Transport errors and 5xx also are.
pub fn is_retryable(code: &str) -> bool {
    is_throttling(code)
        || code.starts_with("InternalError")
        || code.starts_with("ServiceUnavailable")
        || code == SIGNATURE_NONCE_USED
        || code == OPERATION_CONFLICT
}

/// The resource does not exist (any `*.NotFound` code).
pub fn is_not_found(code: &str) -> bool {
    code.ends_with(".NotFound")
}

/// The cloud will not create or attach another ENI for a while: more calls cannot help.
pub fn refuses_enis(code: &str) -> bool {
    code == ENI_PER_INSTANCE_LIMIT
        || code == "QuotaExceeded"
        || code.starts_with("QuotaExceeded.") && code != ENI_IP_QUOTA
}

/// Codes that retrying cannot fix (missing permission, a wrong id or parameter): pods waiting
/// on the operation fail at once with the cloud's words.
pub fn is_final(code: &str) -> bool {
    code.starts_with("Forbidden")
        || code.starts_with("InvalidAccessKeyId")
        || code.starts_with("InvalidSecurityGroupId")
        || code.starts_with("InvalidVSwitchId.NotFound")
        || code == VSWITCH_IPV6_NOT_ENABLED
        || matches!(
            code,
            "SignatureDoesNotMatch"
                | "InvalidParameter"
                | "MissingParameter"
                | "IncorrectInstanceStatus"
        )
}

/// The route table is busy with another change (route entries are changed one at a time per
/// VPC, asynchronously): the same call succeeds a few seconds later.
pub fn is_route_busy(code: &str) -> bool {
    matches!(
        code,
        "TaskConflict"
            | "IncorrectRouteEntryStatus"
            | "IncorrectVpcStatus"
            | "OperationConflict"
            | OPERATION_CONFLICT
    )
}

/// A route entry for the destination exists already.
pub fn is_route_duplicate(code: &str) -> bool {
    code == ROUTE_CIDR_DUPLICATE || code == ROUTE_ENTRY_DUPLICATED
}

/// The ENI holds as many addresses of one family as its instance type allows: another ENI (or
/// fewer addresses) is the way on, not a retry.
pub fn is_eni_full(code: &str) -> bool {
    matches!(
        code,
        ENI_IP_QUOTA | IPV4_COUNT_EXCEEDED | IPV6_COUNT_EXCEEDED
    )
}

/// One spelling per meaning, as the pools speak: a full ENI is [`ENI_IP_QUOTA`].
pub fn normalize(code: &str) -> &str {
    match code {
        IPV4_COUNT_EXCEEDED => ENI_IP_QUOTA,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert!(is_retryable("Throttling.User") && is_throttling("Throttling.User"));
        assert!(is_retryable("ServiceUnavailable") && !is_retryable("Forbidden.RAM"));
        assert!(is_retryable(OPERATION_CONFLICT) && !is_final(OPERATION_CONFLICT));
        assert!(is_final("Forbidden.RAM") && is_final("InvalidVSwitchId.NotFound"));
        assert!(!is_final(VSWITCH_IP_NOT_ENOUGH));
        assert!(refuses_enis(ENI_PER_INSTANCE_LIMIT) && refuses_enis("QuotaExceeded.Eni"));
        assert!(
            !refuses_enis(ENI_IP_QUOTA),
            "a full ENI does not stop new ENIs"
        );
        assert_eq!(normalize(IPV4_COUNT_EXCEEDED), ENI_IP_QUOTA);
        assert!(is_eni_full(IPV6_COUNT_EXCEEDED) && is_eni_full(IPV4_COUNT_EXCEEDED));
        assert!(!is_eni_full(VSWITCH_IP_NOT_ENOUGH) && !refuses_enis(IPV6_COUNT_EXCEEDED));
        assert!(is_final(VSWITCH_IPV6_NOT_ENABLED) && !is_retryable(VSWITCH_IPV6_NOT_ENABLED));
        assert!(is_not_found(ENI_NOT_FOUND));
        assert!(is_route_busy("TaskConflict") && !is_route_busy(ROUTE_CIDR_DUPLICATE));
        assert!(is_route_duplicate(ROUTE_ENTRY_DUPLICATED) && !is_route_duplicate("TaskConflict"));
    }
}
