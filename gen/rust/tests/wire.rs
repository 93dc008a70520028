// Messages encoded by the Python stubs decode to the same values here, and back.
use prost::Message;
use threegen_proto::threegen::common::v1 as common;
use threegen_proto::threegen::gateway::v1 as gateway;
use threegen_proto::threegen::render::v1 as render;

#[test]
fn round_trip_in_rust() {
    let request = gateway::GenerateRequest {
        prompt: "a wooden chair".into(),
        seed: Some(42),
        outputs: Some(render::RenderOptions {
            exports: vec![render::MeshFormat::Glb as i32],
            ..Default::default()
        }),
        ..Default::default()
    };
    let decoded = gateway::GenerateRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, request);
}

#[test]
fn decodes_what_python_encoded() {
    let Ok(path) = std::env::var("THREEGEN_WIRE_SAMPLE") else {
        eprintln!("THREEGEN_WIRE_SAMPLE not set: nothing from Python to decode");
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let response = gateway::GenerateResponse::decode(bytes.as_slice()).unwrap();
    match response.event {
        Some(gateway::generate_response::Event::Result(result)) => {
            assert_eq!(result.seed, 4242);
            let stats = result.stats.unwrap();
            assert_eq!(stats.face_count, 1234);
            assert_eq!(stats.kind, common::GeometryKind::Mesh as i32);
            assert_eq!(result.artifacts[0].name, "mesh.glb");
            assert_eq!(result.artifacts[0].sha256, "ab".repeat(32));
            assert_eq!(result.timings[0].stage, common::Stage::Render as i32);
            assert!(result.cached);
        }
        other => panic!("expected a result, got {:?}", other),
    }
}
