"""Drives `terway emulate` with Alibaba Cloud's official Python SDKs, every action terway uses,
in three styles:

- Tea clients (alibabacloud_ecs20140526 / alibabacloud_vpc20160428), V3 signatures
  (ACS3-HMAC-SHA256, the default);
- the same Tea clients with signature_algorithm="v2" (HMAC-SHA1 in the query);
- the classic aliyun-python-sdk-core AcsClient with the aliyun-python-sdk-ecs/-vpc request
  classes (V2 signatures).

Every answer the classic client returns (raw JSON) must hold only fields the Tea response models
know: the models are generated from the API's own metadata, so anything else is a field the real
service does not document. Errors must carry the documented error fields.

Run by tests/emulate_sdk.rs, which starts the emulator and passes it in the environment:
EMU_ENDPOINT (host:port), EMU_KEY_ID, EMU_SECRET. Prints one line per style, exits non-zero with
the reason on the first failure.
"""

import importlib
import json
import os
import re
import sys
import time
import urllib.request

ENDPOINT = os.environ["EMU_ENDPOINT"]
KEY_ID = os.environ["EMU_KEY_ID"]
SECRET = os.environ["EMU_SECRET"]

ECS_ACTIONS = {
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "DescribeNetworkInterfaces",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DescribeInstanceTypes",
    "DescribeInstances",
}
VPC_ACTIONS = {
    "DescribeVSwitches",
    "CreateRouteEntry",
    "DeleteRouteEntry",
    "DescribeRouteEntryList",
    "DescribeRouteTableList",
}
ERROR_FIELDS = {"RequestId", "HostId", "Code", "Message", "Recommend"}


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def admin(path):
    with urllib.request.urlopen(f"http://{ENDPOINT}{path}", timeout=10) as r:
        return json.load(r)


class ApiError(Exception):
    """An error answer, whichever SDK raised it."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{code} (HTTP {status}): {message}")
        self.status, self.code, self.body = status, code, body


def snake(action):
    """Tea method names: DescribeVSwitches -> describe_vswitches."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", action).lower()


class Tea:
    """The generated Tea clients, V3-signed unless `v2`."""

    def __init__(self, v2):
        from alibabacloud_ecs20140526.client import Client as EcsClient
        from alibabacloud_tea_openapi import models as open_api_models
        from alibabacloud_vpc20160428.client import Client as VpcClient

        def config():
            c = open_api_models.Config(
                access_key_id=KEY_ID,
                access_key_secret=SECRET,
                endpoint=ENDPOINT,
                protocol="HTTP",
                region_id=REGION,
            )
            if v2:
                c.signature_algorithm = "v2"
            return c

        self.name = "Tea, V2 signature" if v2 else "Tea, V3 signature"
        self.ecs = EcsClient(config())
        self.vpc = VpcClient(config())

    def call(self, action, params):
        if action in ECS_ACTIONS:
            client, models = self.ecs, importlib.import_module("alibabacloud_ecs20140526.models")
        else:
            client, models = self.vpc, importlib.import_module("alibabacloud_vpc20160428.models")
        request = getattr(models, f"{action}Request")().from_map(params)
        try:
            response = getattr(client, snake(action))(request)
        except Exception as e:  # the Tea exceptions of tea-openapi / darabonba
            code = getattr(e, "code", None)
            if code is None:
                raise
            status = getattr(e, "status_code", None) or getattr(e, "statusCode", None)
            data = getattr(e, "data", None) or {}
            raise ApiError(status, code, getattr(e, "message", str(e)), data) from None
        check(response.status_code == 200, f"{action}: HTTP {response.status_code}")
        return response.body.to_map()


class Classic:
    """aliyun-python-sdk-core's AcsClient with the per-product request classes (V2)."""

    def __init__(self):
        from aliyunsdkcore.client import AcsClient

        self.name = "classic AcsClient, V2 signature"
        self.client = AcsClient(KEY_ID, SECRET, REGION)

    def call(self, action, params):
        from aliyunsdkcore.acs_exception.exceptions import ServerException

        package = (
            "aliyunsdkecs.request.v20140526"
            if action in ECS_ACTIONS
            else "aliyunsdkvpc.request.v20160428"
        )
        module = importlib.import_module(f"{package}.{action}Request")
        request = getattr(module, f"{action}Request")()
        request.set_endpoint(ENDPOINT)
        request.set_protocol_type("http")
        request.set_accept_format("json")
        for name, value in params.items():
            # Repeated parameters have setters named with an extra "s" (set_SecurityGroupIdss).
            setter = getattr(request, f"set_{name}s", None) if isinstance(value, list) else None
            setter = setter or getattr(request, f"set_{name}", None)
            if setter is None and name == "RegionId":
                continue  # some request classes leave it to the client, which adds its own
            setter(value)
        try:
            raw = self.client.do_action_with_exception(request)
        except ServerException as e:
            raise ApiError(e.get_http_status(), e.get_error_code(), e.get_error_msg()) from None
        body = json.loads(raw)
        documented(action, body)
        return body


def documented(action, body):
    """`body` holds only fields the Tea response model of `action` knows (recursively)."""
    package = "alibabacloud_ecs20140526" if action in ECS_ACTIONS else "alibabacloud_vpc20160428"
    models = importlib.import_module(f"{package}.models")
    model = getattr(models, f"{action}ResponseBody")
    round_trip = model().from_map(body).to_map()
    check(
        round_trip == body,
        f"{action}: fields the API does not document: {diff(body, round_trip)}",
    )


def diff(raw, known, path=""):
    """Paths present in `raw` but not in `known`."""
    out = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            if not isinstance(known, dict) or k not in known:
                out.append(f"{path}{k}")
            else:
                out.extend(diff(v, known[k], f"{path}{k}."))
    elif isinstance(raw, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(raw, known)):
            out.extend(diff(a, b, f"{path}{i}."))
    elif raw != known:
        out.append(f"{path} ({raw!r} vs {known!r})")
    return out


def expect_error(api, action, params, status, code):
    try:
        api.call(action, params)
    except ApiError as e:
        check(
            (e.status, e.code) == (status, code),
            f"{action}: want {code} (HTTP {status}), got {e.code} (HTTP {e.status})",
        )
        return e
    raise Failed(f"{action} succeeded, want {code}")


def wait_for(what, f, timeout=15.0):
    end = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        check(time.monotonic() < end, f"timed out waiting for {what}")
        time.sleep(0.1)


def drive(api, n):
    """Every action terway uses, through `api`; `n` keeps the styles' resources apart."""
    r = {"RegionId": REGION}
    tag = [{"Key": "sdk-test", "Value": api.name}]

    # DescribeInstanceTypes has no RegionId: the official SDKs do not send one.
    want = TYPES[INSTANCE_TYPE]
    v = api.call("DescribeInstanceTypes", {"InstanceTypes": [INSTANCE_TYPE]})
    t = v["InstanceTypes"]["InstanceType"]
    check(len(t) == 1 and t[0]["InstanceTypeId"] == INSTANCE_TYPE, f"instance types: {v}")
    for field, key in [
        ("EniQuantity", "eni_quantity"),
        ("EniPrivateIpAddressQuantity", "eni_private_ip_address_quantity"),
        ("EniTotalQuantity", "eni_total_quantity"),
    ]:
        check(t[0][field] == want[key], f"{field}: {t[0]} vs {want}")

    v = api.call("DescribeVSwitches", {**r, "VSwitchId": VSWITCH})
    s = v["VSwitches"]["VSwitch"]
    check(len(s) == 1 and s[0]["CidrBlock"] == VSWITCH_CIDR, f"vSwitch: {v}")
    free_before = s[0]["AvailableIpAddressCount"]
    v = api.call("DescribeVSwitches", {"VpcId": VPC_ID})
    check(v["TotalCount"] == len(MODEL["vswitches"]), f"vSwitches of the VPC: {v}")

    v = api.call("DescribeInstances", {**r, "InstanceIds": json.dumps([INSTANCE])})
    i = v["Instances"]["Instance"]
    check(len(i) == 1 and i[0]["InstanceType"] == INSTANCE_TYPE, f"instances: {v}")
    check(i[0]["VpcAttributes"]["VpcId"] == VPC_ID, f"instance VPC: {i[0]}")

    token = f"sdk-test-{n}-{time.time_ns()}"
    create = {
        **r,
        "VSwitchId": VSWITCH,
        "SecurityGroupIds": [SECURITY_GROUP],
        "SecondaryPrivateIpAddressCount": 2,
        "Tag": tag,
        "Description": "sdk test",
        "ClientToken": token,
    }
    v = api.call("CreateNetworkInterface", create)
    eni = v["NetworkInterfaceId"]
    check(v["Status"] == "Available" and v["VSwitchId"] == VSWITCH, f"created: {v}")
    check(len(v["PrivateIpSets"]["PrivateIpSet"]) == 3, f"primary + 2: {v}")
    again = api.call("CreateNetworkInterface", create)
    check(again["NetworkInterfaceId"] == eni, "the same ClientToken gives the same ENI")

    def describe(**extra):
        return api.call("DescribeNetworkInterfaces", {**r, **extra})

    def one(eni_id):
        sets = describe(NetworkInterfaceId=[eni_id])["NetworkInterfaceSets"]
        found = sets.get("NetworkInterfaceSet") or []
        return found[0] if found else None

    api.call("AttachNetworkInterface", {**r, "InstanceId": INSTANCE, "NetworkInterfaceId": eni})
    check(one(eni)["Status"] in ("Attaching", "InUse"), "attaching")
    e = wait_for("InUse", lambda: (x := one(eni)) and x["Status"] == "InUse" and x)
    check(e["InstanceId"] == INSTANCE, f"attached to {INSTANCE}: {e}")
    check(e["Attachment"]["InstanceId"] == INSTANCE, f"attachment: {e}")
    expect_error(
        api,
        "DeleteNetworkInterface",
        {**r, "NetworkInterfaceId": eni},
        400,
        "InvalidOperation.InvalidEniState",
    )

    v = api.call(
        "AssignPrivateIpAddresses",
        {
            **r,
            "NetworkInterfaceId": eni,
            "SecondaryPrivateIpAddressCount": 3,
            "ClientToken": token + "-assign",
        },
    )
    added = v["AssignedPrivateIpAddressesSet"]["PrivateIpSet"]["PrivateIpAddress"]
    check(len(added) == 3, f"assigned: {v}")
    api.call(
        "UnassignPrivateIpAddresses",
        {**r, "NetworkInterfaceId": eni, "PrivateIpAddress": added[:2]},
    )
    expect_error(
        api,
        "UnassignPrivateIpAddresses",
        {**r, "NetworkInterfaceId": eni, "PrivateIpAddress": added[:1]},
        403,
        "InvalidIp.IpUnassigned",
    )
    # MaxResults is clamped to 10..500, never refused.
    v = describe(Tag=tag, MaxResults=1000)
    found = v["NetworkInterfaceSets"]["NetworkInterfaceSet"]
    check([x["NetworkInterfaceId"] for x in found] == [eni], f"by tag: {v}")
    ips = [p["PrivateIpAddress"] for p in found[0]["PrivateIpSets"]["PrivateIpSet"]]
    check(len(ips) == 4 and added[2] in ips and added[0] not in ips, f"addresses: {ips}")
    seen, next_token = [], None
    while True:
        page = describe(MaxResults=1, **({"NextToken": next_token} if next_token else {}))
        items = page["NetworkInterfaceSets"].get("NetworkInterfaceSet") or []
        check(len(items) <= 10, f"a page of at most 10 (MaxResults 1 taken as 10): {len(items)}")
        seen += [x["NetworkInterfaceId"] for x in items]
        next_token = page.get("NextToken")
        if not next_token:
            break
    check(eni in seen and len(seen) == len(set(seen)), f"paging: {seen}")

    api.call("DetachNetworkInterface", {**r, "InstanceId": INSTANCE, "NetworkInterfaceId": eni})
    wait_for("Available", lambda: one(eni)["Status"] == "Available")
    # DeleteNetworkInterface is asynchronous: Deleting, then not found.
    api.call("DeleteNetworkInterface", {**r, "NetworkInterfaceId": eni})
    gone = one(eni)
    check(gone is None or gone["Status"] == "Deleting", f"deleting: {gone}")
    wait_for("deleted", lambda: one(eni) is None)
    expect_error(
        api,
        "DeleteNetworkInterface",
        {**r, "NetworkInterfaceId": eni},
        404,
        "InvalidEniId.NotFound",
    )
    v = api.call("DescribeVSwitches", {**r, "VSwitchId": VSWITCH})
    check(
        v["VSwitches"]["VSwitch"][0]["AvailableIpAddressCount"] == free_before,
        "the ENI's addresses went back to the vSwitch",
    )

    # VPC mode's route table and entries.
    v = api.call("DescribeRouteTableList", {**r, "VpcId": VPC_ID})
    tables = v["RouterTableList"]["RouterTableListType"]
    check([t["RouteTableId"] for t in tables] == [ROUTE_TABLE], f"route tables: {v}")
    cidr = f"10.{200 + n}.0.0/24"
    v = api.call(
        "CreateRouteEntry",
        {
            **r,
            "RouteTableId": ROUTE_TABLE,
            "DestinationCidrBlock": cidr,
            "NextHopType": "Instance",
            "NextHopId": INSTANCE,
        },
    )
    entry = v["RouteEntryId"]

    def routes():
        v = api.call(
            "DescribeRouteEntryList",
            {**r, "RouteTableId": ROUTE_TABLE, "DestinationCidrBlock": cidr},
        )
        return v["RouteEntrys"].get("RouteEntry") or []

    listed = wait_for("the route entry", lambda: [x for x in routes() if x["RouteEntryId"] == entry])
    hop = listed[0]["NextHops"]["NextHop"][0]
    check(hop["NextHopId"] == INSTANCE and hop["NextHopType"] == "Instance", f"route: {listed}")
    api.call("DeleteRouteEntry", {**r, "RouteTableId": ROUTE_TABLE, "RouteEntryId": entry})
    wait_for("the route entry to go", lambda: not routes())

    # An error answer has the documented fields only.
    e = expect_error(
        api,
        "AttachNetworkInterface",
        {**r, "InstanceId": INSTANCE, "NetworkInterfaceId": "eni-doesnotexist00000000"},
        404,
        "InvalidEniId.NotFound",
    )
    if e.body:
        extra = set(e.body) - ERROR_FIELDS - {"statusCode"}
        check(not extra, f"undocumented error fields: {extra}")


def main():
    global MODEL, REGION, VPC_ID, ROUTE_TABLE, INSTANCE, INSTANCE_TYPE, TYPES
    global VSWITCH, VSWITCH_CIDR, SECURITY_GROUP
    MODEL = admin("/admin/model")
    REGION, VPC_ID = MODEL["region_id"], MODEL["vpc_id"]
    ROUTE_TABLE = MODEL["route_table_id"]
    INSTANCE = sorted(MODEL["instances"])[0]
    INSTANCE_TYPE = MODEL["instances"][INSTANCE]["instance_type"]
    TYPES = {t["id"]: t for t in MODEL["instance_types"]}
    VSWITCH = MODEL["instances"][INSTANCE]["vswitch_id"]
    VSWITCH_CIDR = "{addr}/{prefix}".format(**MODEL["vswitches"][VSWITCH]["cidr"])
    SECURITY_GROUP = MODEL["security_groups"][0]
    styles = [lambda: Tea(v2=False), lambda: Tea(v2=True), Classic]
    for n, make in enumerate(styles):
        api = make()
        start = time.monotonic()
        try:
            drive(api, n)
        except (Failed, ApiError) as e:
            print(f"FAILED with {api.name}: {e}", file=sys.stderr)
            return 1
        print(f"ok: {api.name}, every action ({time.monotonic() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
