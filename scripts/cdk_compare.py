"""Compare the SAM template with the CDK construct's synthesized stack.

    python cdk_compare.py TEMPLATE.yaml CDK_TEMPLATE.json PARAMETERS.json

TEMPLATE.yaml is transformed to plain CloudFormation with aws-sam-translator (offline:
no AWS account), both templates are evaluated with the same parameter values (SAM's
parameters, CDK's props from the same file) and a fixed account and region, and each
resource is named by what it is (a function by its name, a role by whose it is, a queue by
its name...) instead of its logical id. Then it compares:

- resource types and counts, and which resources exist;
- every resource's properties: IAM statements per role (action by action, resource by
  resource, with conditions), event sources, schedules, alarms, queues, the table, the
  API and its stage, the state machine's definition;
- the outputs.

Every difference is printed with where it is; the exit status is 1 if there is any.
"""

import json
import os
import re
import sys

ACCOUNT, REGION = "123456789012", "us-east-1"
PSEUDO = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "<stack>",
}
NO_VALUE = object()
# Properties that say nothing about what is deployed (tags SAM adds, code locations).
IGNORED = {"Tags", "Code", "DefinitionS3Location", "DefinitionString"}


def sam_to_cloudformation(path, parameters):
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    class NoManagedPolicies:
        def load(self):
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    with open(path) as f:
        template = yaml_parse(f.read())
    base = os.path.dirname(os.path.abspath(path))
    definitions = {}
    for name, r in template["Resources"].items():
        p = r.get("Properties", {})
        # As `sam package` leaves them; the code itself is not compared.
        if "CodeUri" in p:
            p["CodeUri"] = f"s3://packaged/{name}.zip"
        if "DefinitionUri" in p:
            with open(os.path.join(base, p["DefinitionUri"])) as f:
                definitions[name] = json.load(f)
            p["DefinitionUri"] = f"s3://packaged/{name}.json"
    out = transform(template, parameters, NoManagedPolicies())
    for name, d in definitions.items():
        out["Resources"][name]["Properties"]["Definition"] = d
    return out


class Evaluated:
    """A template with its conditions and intrinsic functions evaluated."""

    def __init__(self, template, parameters):
        self.t = template
        self.params = {}
        for name, spec in template.get("Parameters", {}).items():
            if name in parameters:
                self.params[name] = str(parameters[name])
            elif "Default" in spec:
                self.params[name] = str(spec["Default"])
        self.resources = {}
        for k, r in template["Resources"].items():
            if r["Type"] == "AWS::CDK::Metadata":
                continue
            if "Condition" in r and not self.condition(r["Condition"]):
                continue
            self.resources[k] = r
        self.names = {}

    def condition(self, name):
        return self.truth(self.t["Conditions"][name])

    def truth(self, c):
        if isinstance(c, dict):
            (fn, args), = c.items()
            if fn == "Fn::Equals":
                return self.value(args[0]) == self.value(args[1])
            if fn == "Fn::Not":
                return not self.truth(args[0])
            if fn == "Fn::And":
                return all(self.truth(a) for a in args)
            if fn == "Fn::Or":
                return any(self.truth(a) for a in args)
            if fn == "Condition":
                return self.condition(args)
        raise ValueError(f"condition {c!r}")

    def name_of(self, logical):
        """What a resource is, independent of its logical id."""
        if logical in self.names:
            return self.names[logical]
        self.names[logical] = f"<{logical}>"  # while naming it
        r = self.t["Resources"][logical]
        p = r.get("Properties", {})
        typ = r["Type"]
        field = {
            "AWS::Lambda::Function": "FunctionName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::Events::EventBus": "Name",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::Scheduler::Schedule": "Name",
            "AWS::CloudWatch::Alarm": "AlarmDescription",
            "AWS::StepFunctions::StateMachine": "StateMachineName",
            "AWS::ApiGatewayV2::Stage": "StageName",
            "AWS::Events::Rule": "Description",
        }.get(typ)
        if field:
            name = f"{typ.split('::')[1].lower()}:{self.value(p[field])}"
        elif typ == "AWS::IAM::Role":
            name = "role:" + self.role_owner(logical)
        elif typ == "AWS::ApiGatewayV2::Api":
            name = "api"
        elif typ == "AWS::Lambda::EventSourceMapping":
            name = f"stream-consumer:{self.value(p['FunctionName'])}"
        elif typ == "AWS::Lambda::EventInvokeConfig":
            name = f"async-invoke:{self.value(p['FunctionName'])}"
        elif typ == "AWS::Lambda::Permission":
            name = f"permission:{self.value(p['FunctionName'])}:{p['Principal']}:{self.value(p.get('SourceArn'))}"
        elif typ == "AWS::SQS::QueuePolicy":
            name = f"queue-policy:{self.value(p['Queues'])}"
        else:
            name = f"{typ}:{logical}"
        self.names[logical] = name
        return name

    def role_owner(self, role):
        for k, r in self.resources.items():
            p = r.get("Properties", {})
            for key in ("Role", "RoleArn"):
                if p.get(key) == {"Fn::GetAtt": [role, "Arn"]}:
                    return self.name_of(k)
            target = p.get("Target", {})
            if target.get("RoleArn") == {"Fn::GetAtt": [role, "Arn"]}:
                return self.name_of(k)
        return f"unowned:{role}"

    def ref(self, name):
        if name in self.params:
            return self.params[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        return "{" + self.name_of(name) + "}"

    def att(self, logical, attribute):
        return "{" + self.name_of(logical) + "." + attribute + "}"

    def sub(self, text, variables):
        def one(m):
            key = m.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in variables:
                return str(self.value(variables[key]))
            if "." in key:
                logical, attribute = key.split(".", 1)
                return self.att(logical, attribute)
            return str(self.ref(key))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            return [x for x in (self.value(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (fn, args), = v.items()
            if fn == "Ref":
                return self.ref(args)
            if fn == "Fn::GetAtt":
                logical, attribute = args if isinstance(args, list) else args.split(".", 1)
                return self.att(logical, attribute)
            if fn == "Fn::Sub":
                text, variables = (args, {}) if isinstance(args, str) else args
                return self.sub(text, variables)
            if fn == "Fn::Join":
                return args[0].join(str(x) for x in self.value(args[1]))
            if fn == "Fn::If":
                return self.value(args[1] if self.condition(args[0]) else args[2])
            if fn == "Fn::Select":
                return self.value(args[1])[int(self.value(args[0]))]
            if fn == "Fn::Split":
                return self.value(args[1]).split(args[0])
        out = {}
        for k, x in v.items():
            x = self.value(x)
            if x is not NO_VALUE:
                out[k] = x
        return out


def as_list(x):
    return x if isinstance(x, list) else [x]


def statements(document):
    """A policy document as a set of single-action, single-resource grants."""
    found = set()
    for s in as_list(document.get("Statement", [])):
        condition = json.dumps(s.get("Condition"), sort_keys=True)
        principal = json.dumps(s.get("Principal"), sort_keys=True)
        for action in as_list(s.get("Action", [])):
            for resource in as_list(s.get("Resource", ["-"])):
                found.add(f"{s.get('Effect', 'Allow')} {action} on {resource}"
                          + (f" if {condition}" if condition != "null" else "")
                          + (f" for {principal}" if principal != "null" else ""))
    return sorted(found)


def normalized(e, logical):
    r = e.resources[logical]
    typ = r["Type"]
    p = e.value({k: v for k, v in r.get("Properties", {}).items() if k not in IGNORED})
    if typ == "AWS::IAM::Role":
        grants = []
        for policy in p.get("Policies", []):
            grants += statements(policy["PolicyDocument"])
        assume = statements(p["AssumeRolePolicyDocument"])
        p = {
            "AssumeRole": sorted({re.sub(r'\["?([^"\]]+)"?\]', r'"\1"', a) for a in assume}),
            "ManagedPolicyArns": sorted(p.get("ManagedPolicyArns", [])),
            "Grants": sorted(set(grants)),
        }
    elif typ == "AWS::SQS::QueuePolicy":
        p["PolicyDocument"] = statements(p["PolicyDocument"])
    elif typ == "AWS::DynamoDB::Table":
        p["AttributeDefinitions"] = sorted(p["AttributeDefinitions"], key=lambda a: a["AttributeName"])
        p["GlobalSecondaryIndexes"] = sorted(p["GlobalSecondaryIndexes"], key=lambda i: i["IndexName"])
        for i in p["GlobalSecondaryIndexes"]:
            if "NonKeyAttributes" in i["Projection"]:
                i["Projection"]["NonKeyAttributes"] = sorted(i["Projection"]["NonKeyAttributes"])
    elif typ == "AWS::ApiGatewayV2::Api":
        p.get("Body", {}).pop("tags", None)
    elif typ == "AWS::StepFunctions::StateMachine":
        p["Definition"] = e.t["Resources"][logical]["Properties"].get("Definition") or json.loads(
            r["Properties"]["DefinitionString"])
    elif typ == "AWS::CloudWatch::Alarm":
        p["AlarmActions"] = p.get("AlarmActions", [])
    p["DeletionPolicy"] = r.get("DeletionPolicy", "Delete")
    return p


def differences(a, b, where):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in b:
                yield f"{where}.{k}: only in SAM: {json.dumps(a[k])[:300]}"
            elif k not in a:
                yield f"{where}.{k}: only in CDK: {json.dumps(b[k])[:300]}"
            else:
                yield from differences(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
        for x in sorted(set(a) - set(b)):
            yield f"{where}: only in SAM: {x}"
        for x in sorted(set(b) - set(a)):
            yield f"{where}: only in CDK: {x}"
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]")
    elif str(a) != str(b):
        yield f"{where}: SAM {json.dumps(a)[:300]} != CDK {json.dumps(b)[:300]}"


def model(e):
    resources = {}
    for logical in e.resources:
        name = e.name_of(logical)
        if name in resources:
            raise SystemExit(f"two resources are both {name}: name them apart")
        resources[name] = (e.resources[logical]["Type"], normalized(e, logical))
    outputs = {}
    for k, o in e.t.get("Outputs", {}).items():
        if "Condition" in o and not e.condition(o["Condition"]):
            continue
        outputs[k] = e.value(o["Value"])
    return resources, outputs


def main():
    sam_path, cdk_path, parameters_path = sys.argv[1:4]
    with open(parameters_path) as f:
        parameters = json.load(f)
    sam = Evaluated(sam_to_cloudformation(sam_path, parameters), parameters)
    with open(cdk_path) as f:
        cdk = Evaluated(json.load(f), {})
    (sam_resources, sam_outputs), (cdk_resources, cdk_outputs) = model(sam), model(cdk)

    found = []
    count = lambda rs: {t: sum(1 for x, _ in rs.values() if x == t) for t, _ in rs.values()}
    for typ in sorted(set(count(sam_resources)) | set(count(cdk_resources))):
        a, b = count(sam_resources).get(typ, 0), count(cdk_resources).get(typ, 0)
        if a != b:
            found.append(f"{typ}: {a} in SAM, {b} in CDK")
    for name in sorted(set(sam_resources) | set(cdk_resources)):
        if name not in cdk_resources:
            found.append(f"{name} ({sam_resources[name][0]}): only in SAM")
        elif name not in sam_resources:
            found.append(f"{name} ({cdk_resources[name][0]}): only in CDK")
        else:
            found += differences(sam_resources[name][1], cdk_resources[name][1], name)
    found += differences(sam_outputs, cdk_outputs, "Outputs")

    types = sorted({t for t, _ in sam_resources.values()})
    print(f"compared {len(sam_resources)} resources of {len(types)} types and {len(sam_outputs)} outputs")
    for line in found:
        print("  differs:", line)
    if found:
        print(f"{len(found)} differences between {sam_path} and {cdk_path}")
        return 1
    print("the SAM template and the CDK stack deploy the same resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
