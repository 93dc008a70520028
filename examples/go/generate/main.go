// Command generate calls a threegen gateway from Go: it lists the models, then runs Generate
// and writes every artifact into a folder, checking each file's SHA-256.
//
//	go run ./examples/go/generate -address localhost:50051 -prompt "a wooden chair" -out out/
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	gatewayv1 "github.com/threegen/threegen/gen/go/threegen/gateway/v1"
	imagegenv1 "github.com/threegen/threegen/gen/go/threegen/imagegen/v1"
	reconv1 "github.com/threegen/threegen/gen/go/threegen/recon/v1"
	renderv1 "github.com/threegen/threegen/gen/go/threegen/render/v1"
)

// protoCodec marshals with the protobuf APIv2 runtime the stubs are generated for. gRPC's
// built-in codec goes through github.com/golang/protobuf, which only from v1.4 forwards to
// APIv2; registering this keeps older installs (Debian 12 ships v1.3.5) working too.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v interface{}) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	return proto.Unmarshal(data, v.(proto.Message))
}

func init() { encoding.RegisterCodec(protoCodec{}) }

func main() {
	address := flag.String("address", "localhost:50051", "gateway host:port")
	prompt := flag.String("prompt", "a wooden chair", "what to make")
	seed := flag.Uint("seed", 7, "random seed")
	out := flag.String("out", "out", "folder for the artifacts")
	apiKey := flag.String("api-key", os.Getenv("THREEGEN_API_KEY"), "API key, if the gateway needs one")
	timeout := flag.Duration("timeout", 5*time.Minute, "deadline for the whole request")
	imageSize := flag.Uint("image-size", 0, "generated image size (0: the service default, 512)")
	mcResolution := flag.Uint("mc-resolution", 0, "TripoSR marching-cubes resolution (0: 256)")
	previewSize := flag.Uint("preview-size", 0, "turntable video size (0: 512)")
	flag.Parse()

	conn, err := grpc.Dial(*address, grpc.WithInsecure())
	if err != nil {
		log.Fatalf("dial %s: %v", *address, err)
	}
	defer conn.Close()
	client := gatewayv1.NewGatewayServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*apiKey)
	}

	models, err := client.ListModels(ctx, &gatewayv1.ListModelsRequest{})
	if err != nil {
		log.Fatalf("ListModels: %v", err)
	}
	for _, m := range models.Models {
		fmt.Printf("model %s/%s %s\n", m.Service, m.Name, m.State)
	}

	s := uint32(*seed)
	request := &gatewayv1.GenerateRequest{
		Prompt: *prompt,
		Seed:   &s,
		ImageOptions: &imagegenv1.ImageOptions{
			Width: uint32(*imageSize), Height: uint32(*imageSize),
		},
		ReconOptions: &reconv1.ReconOptions{
			FamilyOptions: &reconv1.ReconOptions_Triposr{
				Triposr: &reconv1.TripoSROptions{McResolution: uint32(*mcResolution)},
			},
		},
		Outputs: &renderv1.RenderOptions{
			Exports: []renderv1.MeshFormat{renderv1.MeshFormat_MESH_FORMAT_GLB},
			Preview: &renderv1.PreviewOptions{Seconds: 1, Fps: 8, Resolution: uint32(*previewSize)},
		},
	}
	stream, err := client.Generate(ctx, request)
	if err != nil {
		log.Fatalf("Generate: %v", err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	files := map[string][]byte{}
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatalf("stream: %v", err)
		}
		switch e := event.Event.(type) {
		case *gatewayv1.GenerateResponse_Progress:
			fmt.Printf("progress %s %.0f%% %s\n", e.Progress.Stage, 100*e.Progress.OverallFraction, e.Progress.Message)
		case *gatewayv1.GenerateResponse_Chunk:
			c := e.Chunk
			files[c.Name] = append(files[c.Name], c.Data...)
			if c.Last {
				digest := sha256.Sum256(files[c.Name])
				if hex.EncodeToString(digest[:]) != c.Sha256 {
					log.Fatalf("%s: digest mismatch", c.Name)
				}
				path := filepath.Join(*out, filepath.Base(c.Name))
				if err := os.WriteFile(path, files[c.Name], 0o644); err != nil {
					log.Fatal(err)
				}
				fmt.Printf("wrote %s (%d bytes)\n", path, len(files[c.Name]))
			}
		case *gatewayv1.GenerateResponse_Result:
			r := e.Result
			fmt.Printf("result seed=%d faces=%d seconds=%.2f\n", r.Seed, r.Stats.FaceCount, r.TotalSeconds)
		}
	}
}
