//! The cloud's error answers: HTTP status, `Code` and `Message` as the real ECS/VPC OpenAPI
//! returns them, so client code written against the emulator handles the real ones.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

pub fn missing(name: &str) -> ApiError {
    ApiError::new(
        400,
        "MissingParameter",
        format!(
            "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
        ),
    )
}

pub fn invalid(name: &str) -> ApiError {
    ApiError::new(
        400,
        "InvalidParameter",
        format!("The specified parameter \"{name}\" is not valid."),
    )
}

pub fn unknown_action() -> ApiError {
    ApiError::new(
        404,
        "InvalidAction.NotFound",
        "Specified api is not found, please check your url and method.",
    )
}

pub fn invalid_version() -> ApiError {
    ApiError::new(
        400,
        "InvalidVersion",
        "Specified parameter Version is not valid.",
    )
}

pub fn region_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidRegionId.NotFound",
        "The specified RegionId does not exist.",
    )
}

pub fn key_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidAccessKeyId.NotFound",
        "Specified access key is not found.",
    )
}

pub fn signature_mismatch(string_to_sign: &str) -> ApiError {
    ApiError::new(
        400,
        "SignatureDoesNotMatch",
        format!(
            "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
        ),
    )
}

pub fn incomplete_signature(what: &str) -> ApiError {
    ApiError::new(
        400,
        "IncompleteSignature",
        format!("The request signature does not conform to Aliyun standards. {what}"),
    )
}

pub fn timestamp_expired() -> ApiError {
    ApiError::new(
        400,
        "InvalidTimeStamp.Expired",
        "Specified time stamp or date value is expired.",
    )
}

pub fn timestamp_format() -> ApiError {
    ApiError::new(
        400,
        "InvalidTimeStamp.Format",
        "Specified time stamp or date value is not well formatted.",
    )
}

pub fn nonce_used() -> ApiError {
    ApiError::new(
        400,
        "SignatureNonceUsed",
        "Specified signature nonce was used already.",
    )
}

pub fn throttled() -> ApiError {
    ApiError::new(
        400,
        "Throttling.User",
        "Request was denied due to user flow control.",
    )
}

pub fn internal() -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        "The request processing has failed due to some unknown error, exception or failure.",
    )
}

pub fn unavailable() -> ApiError {
    ApiError::new(
        503,
        "ServiceUnavailable",
        "The request has failed due to a temporary failure of the server.",
    )
}

/// Another operation on the same resource is under way: retry the same call later.
pub fn operation_conflict() -> ApiError {
    ApiError::new(
        403,
        "Operation.Conflict",
        "The operation may conflict with other operations in progress. Please try again later.",
    )
}

pub fn idempotent_mismatch() -> ApiError {
    ApiError::new(
        400,
        "IdempotentParameterMismatch",
        "Request uses a client token in a previous request but is not identical to that request.",
    )
}

pub fn eni_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidEniId.NotFound",
        "The specified NetworkInterfaceId does not exist.",
    )
}

pub fn ecs_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidEcsId.NotFound",
        "The specified EcsId is not found.",
    )
}

pub fn instance_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidInstanceId.NotFound",
        "The specified InstanceId does not exist.",
    )
}

pub fn vswitch_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidVSwitchId.NotFound",
        "The specified VSwitchId does not exist.",
    )
}

pub fn security_group_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidSecurityGroupId.NotFound",
        "The specified SecurityGroupId does not exist.",
    )
}

/// vSwitch exhaustion; the message names the vSwitch exactly as the cloud does.
pub fn ip_not_enough(vsw: &str) -> ApiError {
    ApiError::new(
        403,
        "InvalidVSwitchId.IpNotEnough",
        format!("The specified VSwitch \"{vsw}\" has not enough IpAddress."),
    )
}

pub fn eni_per_instance_limit() -> ApiError {
    ApiError::new(
        403,
        "EniPerInstanceLimitExceeded",
        "The number of ENI exceeds the limit for the type of instance you are trying to launch.",
    )
}

pub fn ipv4_count_exceeded() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.Ipv4CountExceeded",
        "The maximum number of IPv4 addresses of the network interface has been reached.",
    )
}

pub fn ipv6_count_exceeded() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.Ipv6CountExceeded",
        "The maximum number of IPv6 addresses of the network interface has been reached.",
    )
}

pub fn ipv6_not_enabled() -> ApiError {
    ApiError::new(
        403,
        "InvalidVSwitch.Ipv6NotTurnOn",
        "The IPv6 feature of the specified VSwitch is not enabled.",
    )
}

/// HTTP 400, as the real service answers it (not 403 like the other `InvalidOperation.*`).
pub fn invalid_eni_state() -> ApiError {
    ApiError::new(
        400,
        "InvalidOperation.InvalidEniState",
        "The operation is not allowed in the current ENI state.",
    )
}

pub fn invalid_eni_type() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.InvalidEniType",
        "The operation is not allowed in the current ENI type.",
    )
}

pub fn detach_primary() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.DetachPrimaryEniNotAllowed",
        "Detaching the primary network interface is not allowed.",
    )
}

pub fn zone_mismatch() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.AvailabilityZoneMismatch",
        "The specified VSwitch, network interface and instance are not in the same zone.",
    )
}

pub fn vpc_mismatch() -> ApiError {
    ApiError::new(
        403,
        "InvalidOperation.VpcMismatch",
        "The specified network interface and security group are not in the same VPC.",
    )
}

pub fn ip_unassigned() -> ApiError {
    ApiError::new(
        403,
        "InvalidIp.IpUnassigned",
        "The specified IP address is not assigned to the network interface.",
    )
}

pub fn ip_assigned() -> ApiError {
    ApiError::new(
        403,
        "InvalidIp.IpAssigned",
        "The specified IP address is already assigned.",
    )
}

pub fn ip_invalid() -> ApiError {
    ApiError::new(
        403,
        "InvalidVSwitchId.IpInvalid",
        "The specified private IP address is not in the CIDR block of the VSwitch.",
    )
}

pub fn ip_repeated() -> ApiError {
    ApiError::new(
        403,
        "InvalidIp.IpRepeated",
        "The specified IP addresses are repeated.",
    )
}

pub fn route_table_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidRouteTableId.NotFound",
        "The specified route table does not exist.",
    )
}

pub fn route_entry_not_found() -> ApiError {
    ApiError::new(
        404,
        "InvalidRouteEntry.NotFound",
        "The specified route entry does not exist.",
    )
}

pub fn route_entry_conflict() -> ApiError {
    ApiError::new(
        400,
        "InvalidCIDRBlock.Duplicate",
        "The specified destination CIDR block already exists in the route table.",
    )
}

pub fn incorrect_instance_status() -> ApiError {
    ApiError::new(
        403,
        "IncorrectInstanceStatus",
        "The current status of the resource does not support this operation.",
    )
}
