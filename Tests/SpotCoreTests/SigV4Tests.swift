import Foundation
import Testing

@testable import SpotCore

/// The SigV4 signer against AWS's published vectors: the aws-sig-v4-test-suite (`get-vanilla`, `post-vanilla`,
/// `get-vanilla-query-order-key-case`), the IAM `ListUsers` example of the SigV4 documentation (canonical request
/// hash, derived key, signature), and the S3 `GET Object` example of the S3 API reference.
@Suite("AWS Signature Version 4")
struct SigV4Tests {
    let suite = AWSCredentials(accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    let suiteTime = TimeFormat.parseRFC3339("2015-08-30T12:36:00Z")!

    func authorization(_ headers: [(String, String)]) -> String? { headers.first { $0.0 == "Authorization" }?.1 }

    @Test func theTestSuiteVectors() {
        let signer = SigV4(region: "us-east-1", service: "service")
        let host = [("Host", "example.amazonaws.com")]
        let vanilla = signer.sign(.init(method: "GET", path: "/", headers: host), credentials: suite, at: suiteTime)
        #expect(vanilla.first { $0.0 == "X-Amz-Date" }?.1 == "20150830T123600Z")
        #expect(
            authorization(vanilla)
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, "
                + "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        let post = signer.sign(.init(method: "POST", path: "/", headers: host), credentials: suite, at: suiteTime)
        #expect(authorization(post)?.hasSuffix("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b") == true)
        let ordered = signer.sign(
            .init(method: "GET", path: "/", query: [("Param2", "value2"), ("Param1", "value1")], headers: host), credentials: suite,
            at: suiteTime)
        #expect(authorization(ordered)?.hasSuffix("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500") == true)
    }

    /// The documentation's worked example: IAM `ListUsers`, step by step.
    @Test func theIAMListUsersExample() {
        #expect(
            SigV4.hex(SigV4.signingKey(secret: suite.secretAccessKey, date: "20150830", region: "us-east-1", service: "iam"))
                == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9")
        let request = SigV4.Request(
            method: "GET", path: "/", query: [("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: [
                ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"), ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ])
        let canonical = SigV4.canonicalRequest(request, payloadHash: SigV4.sha256Hex(Data()))
        #expect(SigV4.sha256Hex(Data(canonical.text.utf8)) == "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59")
        var unsigned = request
        unsigned.headers.removeLast()
        let signed = SigV4(region: "us-east-1", service: "iam").sign(unsigned, credentials: suite, at: suiteTime)
        #expect(authorization(signed)?.hasSuffix("Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7") == true)
        #expect(authorization(signed)?.contains("SignedHeaders=content-type;host;x-amz-date,") == true)
    }

    /// S3 `GET Object` with a `Range` header and `x-amz-content-sha256` (S3 API reference).
    @Test func theS3GetObjectExample() {
        let credentials = AWSCredentials(accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        let signed = SigV4(region: "us-east-1", service: "s3").sign(
            .init(
                method: "GET", path: "/test.txt",
                headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"), ("x-amz-content-sha256", empty)]),
            credentials: credentials, at: TimeFormat.parseRFC3339("2013-05-24T00:00:00Z")!, payloadHash: empty)
        #expect(authorization(signed)?.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,") == true)
        #expect(authorization(signed)?.hasSuffix("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41") == true)
    }

    /// Temporary credentials: the session token is sent and signed; encoding is RFC 3986 (`%20`, never `+`).
    @Test func sessionTokensAreSignedAndEncodingIsStrict() {
        let temporary = AWSCredentials(accessKeyId: "AKID", secretAccessKey: "secret", sessionToken: "token")
        let signed = SigV4(region: "us-east-1", service: "sqs").sign(
            .init(method: "POST", path: "/", headers: [("Host", "sqs.us-east-1.amazonaws.com")], body: Data("Action=X".utf8)),
            credentials: temporary, at: suiteTime)
        #expect(signed.contains { $0 == ("X-Amz-Security-Token", "token") })
        #expect(authorization(signed)?.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,") == true)
        #expect(SigV4.encode("a b/c~d+é") == "a%20b%2Fc~d%2B%C3%A9")
    }
}

/// The signer against botocore's (PyPI), on requests the test suite does not cover: the SQS JSON protocol with a
/// session token, query values that need encoding, headers with runs of spaces. Runs where python3 and botocore are
/// installed (`.ci/run` installs them with moto); says so and passes elsewhere unless `SPOTD_REQUIRE_MOTO` is set.
@Suite("SigV4 against botocore")
struct SigV4BotocoreTests {
    static let script = #"""
        import json, sys
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        out = []
        for case in json.load(sys.stdin):
            req = AWSRequest(method=case["method"], url=case["url"], data=case["body"].encode(), headers=case["headers"])
            SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", case.get("token")), case["service"], "eu-west-1").add_auth(req)
            out.append({"date": req.headers["X-Amz-Date"], "authorization": req.headers["Authorization"]})
        print(json.dumps(out))
        """#

    struct Case {
        var method: String
        var host: String
        var path: String
        var query: [(String, String)]
        var headers: [(String, String)]
        var body: String
        var service: String
        var token: String?
    }

    @Test func botocoreSignsTheSameWay() throws {
        let cases = [
            Case(
                method: "POST", host: "sqs.eu-west-1.amazonaws.com", path: "/", query: [],
                headers: [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "AmazonSQS.ReceiveMessage")],
                body: #"{"QueueUrl":"https://sqs.eu-west-1.amazonaws.com/123456789012/spotd","WaitTimeSeconds":20}"#, service: "sqs",
                token: "FQoGZXIvYXdzEJr//////////wEaDOpEXAMPLE"),
            Case(
                method: "GET", host: "ec2.eu-west-1.amazonaws.com", path: "/",
                query: [("Action", "DescribeInstances"), ("Filter.1.Value.1", "a b~c/d+é"), ("Version", "2016-11-15")],
                headers: [("X-Custom", "  several   spaces  here ")], body: "", service: "ec2", token: nil),
        ]
        var payload: [JSONValue] = []
        for item in cases {
            let query = item.query.map { "\(SigV4.encode($0.0))=\(SigV4.encode($0.1))" }.joined(separator: "&")
            payload.append(
                .object([
                    "method": .string(item.method), "url": .string("https://\(item.host)\(item.path)" + (query.isEmpty ? "" : "?\(query)")),
                    "headers": .object(Dictionary(uniqueKeysWithValues: item.headers.map { ($0.0, JSONValue.string($0.1)) })),
                    "body": .string(item.body), "service": .string(item.service), "token": item.token.map(JSONValue.string) ?? .null,
                ]))
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        input.fileHandleForWriting.write(Data(JSONValue.array(payload).jsonText.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let answers = try? JSONDecoder().decode(JSONValue.self, from: data).array else {
            if ProcessInfo.processInfo.environment["SPOTD_REQUIRE_MOTO"] != nil { Issue.record("python3 with botocore is not installed") }
            print("python3 with botocore is not installed: skipping the botocore comparison")
            return
        }
        #expect(answers.count == cases.count)
        for (item, answer) in zip(cases, answers) {
            let date = try #require(answer["date"]?.string)
            let millis = try #require(
                TimeFormat.parseRFC3339(
                    "\(date.prefix(4))-\(date.dropFirst(4).prefix(2))-\(date.dropFirst(6).prefix(2))T\(date.dropFirst(9).prefix(2)):"
                        + "\(date.dropFirst(11).prefix(2)):\(date.dropFirst(13).prefix(2))Z"))
            let signed = SigV4(region: "eu-west-1", service: item.service).sign(
                .init(
                    method: item.method, path: item.path, query: item.query, headers: [("Host", item.host)] + item.headers,
                    body: Data(item.body.utf8)),
                credentials: AWSCredentials(
                    accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", sessionToken: item.token),
                at: millis)
            #expect(signed.first { $0.0 == "Authorization" }?.1 == answer["authorization"]?.string, "\(item.method) \(item.host)")
        }
    }
}
