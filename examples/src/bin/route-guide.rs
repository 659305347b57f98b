//! A route-guide style service: a unary lookup, a server stream, a client stream and a bidi
//! chat, with a server and client in one process on the default runtime.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use anygrpc::{Request, Response, ResponseStream, Status, Streaming};
use anygrpc_examples::routeguide::{
    route_guide_client::RouteGuideClient, route_guide_server, Feature, Point, Rectangle, RouteNote,
    RouteSummary,
};
use futures_util::StreamExt;

/// A 10 × 10 grid of features, one every 0.1°, named after their position.
fn features() -> Vec<Feature> {
    let mut out = Vec::new();
    for i in 0..10 {
        for j in 0..10 {
            let location = Point {
                latitude: 400_000_000 + i * 1_000_000,
                longitude: -740_000_000 + j * 1_000_000,
            };
            out.push(Feature {
                name: format!("Landmark {i}-{j}"),
                location: Some(location),
            });
        }
    }
    out
}

fn in_range(point: &Point, rect: &Rectangle) -> bool {
    let (lo, hi) = (rect.lo.unwrap_or_default(), rect.hi.unwrap_or_default());
    let (left, right) = (
        lo.longitude.min(hi.longitude),
        lo.longitude.max(hi.longitude),
    );
    let (bottom, top) = (lo.latitude.min(hi.latitude), lo.latitude.max(hi.latitude));
    (left..=right).contains(&point.longitude) && (bottom..=top).contains(&point.latitude)
}

/// Great-circle distance in metres (haversine).
fn distance(a: &Point, b: &Point) -> i32 {
    const E7: f64 = 1e7;
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let (lat1, lat2) = (
        (a.latitude as f64 / E7).to_radians(),
        (b.latitude as f64 / E7).to_radians(),
    );
    let (lng1, lng2) = (
        (a.longitude as f64 / E7).to_radians(),
        (b.longitude as f64 / E7).to_radians(),
    );
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lng2 - lng1) / 2.0).sin().powi(2);
    (2.0 * EARTH_RADIUS_M * h.sqrt().atan2((1.0 - h).sqrt())) as i32
}

/// Notes left so far, by (latitude, longitude).
type Notes = std::sync::Arc<Mutex<HashMap<(i32, i32), Vec<RouteNote>>>>;

#[derive(Debug, Default)]
struct RouteGuide {
    features: Vec<Feature>,
    notes: Notes,
}

impl route_guide_server::RouteGuide for RouteGuide {
    async fn get_feature(&self, request: Request<Point>) -> Result<Response<Feature>, Status> {
        let point = request.into_inner();
        let feature = self
            .features
            .iter()
            .find(|f| f.location.as_ref() == Some(&point))
            .cloned()
            .unwrap_or(Feature {
                name: String::new(),
                location: Some(point),
            });
        Ok(Response::new(feature))
    }

    async fn list_features(
        &self,
        request: Request<Rectangle>,
    ) -> Result<Response<ResponseStream<Feature>>, Status> {
        let rect = request.into_inner();
        let found: Vec<_> = self
            .features
            .iter()
            .filter(|f| f.location.as_ref().is_some_and(|p| in_range(p, &rect)))
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(found))))
    }

    async fn record_route(
        &self,
        request: Request<Streaming<Point>>,
    ) -> Result<Response<RouteSummary>, Status> {
        let start = Instant::now();
        let mut points = request.into_inner();
        let mut summary = RouteSummary::default();
        let mut last: Option<Point> = None;
        while let Some(point) = points.message().await? {
            summary.point_count += 1;
            if self
                .features
                .iter()
                .any(|f| f.location.as_ref() == Some(&point))
            {
                summary.feature_count += 1;
            }
            if let Some(last) = &last {
                summary.distance += distance(last, &point);
            }
            last = Some(point);
        }
        summary.elapsed_time = start.elapsed().as_secs() as i32;
        Ok(Response::new(summary))
    }

    async fn route_chat(
        &self,
        request: Request<Streaming<RouteNote>>,
    ) -> Result<Response<ResponseStream<RouteNote>>, Status> {
        let notes = self.notes.clone();
        let replies = request.into_inner().flat_map(move |note| {
            let replies: Vec<Result<RouteNote, Status>> = match note {
                Ok(note) => {
                    let location = note.location.unwrap_or_default();
                    let mut notes = notes.lock().unwrap_or_else(|e| e.into_inner());
                    let earlier = notes
                        .entry((location.latitude, location.longitude))
                        .or_default();
                    let replies = earlier.iter().cloned().map(Ok).collect();
                    earlier.push(note);
                    replies
                }
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(replies)
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

async fn client(client: RouteGuideClient) -> Result<(), Status> {
    let feature = client
        .get_feature(Point {
            latitude: 403_000_000,
            longitude: -738_000_000,
        })
        .await?;
    println!("GetFeature: {:?}", feature.get_ref().name);

    let rect = Rectangle {
        lo: Some(Point {
            latitude: 400_000_000,
            longitude: -740_000_000,
        }),
        hi: Some(Point {
            latitude: 402_000_000,
            longitude: -739_000_000,
        }),
    };
    let mut stream = client.list_features(rect).await?.into_inner();
    let mut count = 0;
    while let Some(feature) = stream.message().await? {
        count += 1;
        println!("ListFeatures: {}", feature.name);
    }
    println!("ListFeatures: {count} features");

    let route: Vec<Point> = (0..5)
        .map(|i| Point {
            latitude: 400_000_000 + i * 1_000_000,
            longitude: -740_000_000,
        })
        .collect();
    let summary = client
        .record_route(futures_util::stream::iter(route))
        .await?
        .into_inner();
    println!(
        "RecordRoute: {} points, {} features, {} m",
        summary.point_count, summary.feature_count, summary.distance
    );

    let here = Point {
        latitude: 1,
        longitude: 1,
    };
    // A chat: each note is sent from this task through a request channel (the call takes it
    // and puts every message straight on its stream), and the server answers each with the
    // notes left at the same place before it.
    let (mut notes, outgoing) = anygrpc::client::request_channel(1);
    let mut replies = client.route_chat(outgoing).await?.into_inner();
    for (earlier, message) in ["first", "second", "third"].into_iter().enumerate() {
        let note = RouteNote {
            location: Some(here),
            message: message.to_string(),
        };
        if notes.send(note).await.is_err() {
            // The call has ended: reading its responses below gives its status.
            break;
        }
        for _ in 0..earlier {
            if let Some(note) = replies.message().await? {
                println!(
                    "RouteChat: after {message:?}, earlier note {:?}",
                    note.message
                );
            }
        }
    }
    drop(notes);
    while replies.message().await?.is_some() {}
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = RouteGuide {
        features: features(),
        ..RouteGuide::default()
    };
    let server = anygrpc::Server::builder()
        .add_service(route_guide_server::RouteGuideServer::new(service))
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>()?)?;
    let addr = server.local_addr()?;
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let serving = std::thread::spawn(move || {
        anygrpc::rt::block_on(server.serve_with_shutdown(async {
            let _ = stopped.await;
        }))
    });
    let target = match addr {
        anygrpc::rt::Address::Tcp(addr) => addr.to_string(),
        other => other.to_string(),
    };
    let channel = anygrpc::Channel::builder(&target).connect_lazy()?;
    anygrpc::rt::block_on(client(RouteGuideClient::new(channel)))?;
    let _ = stop.send(());
    serving.join().map_err(|_| "server thread panicked")??;
    println!("route guide OK");
    Ok(())
}
