// Drives the service with fhir-kit-client (npm) the way a Node integration would, and prints
// every answer it got as JSON on stdout for tests/test_fhir_clients.py to check and validate.
// Usage: node fhir_kit_client.mjs <FHIR base> <Parameters JSON file>
import { readFileSync } from 'node:fs';
import { Client } from 'fhir-kit-client';

const [baseUrl, parametersFile] = process.argv.slice(2);
const client = new Client({ baseUrl });
const got = {};

got.metadata = await client.capabilityStatement();
got.byIdentifier = await client.search({
  resourceType: 'ResearchStudy',
  searchParams: { identifier: 'NCT07358988' },
});
got.pages = [await client.search({ resourceType: 'ResearchStudy', searchParams: { _count: 1 } })];
for (let page = got.pages[0]; (page = await client.nextPage({ bundle: page })); ) {
  got.pages.push(page);
}
got.read = await client.read({ resourceType: 'ResearchStudy', id: 'NCT06801119' });
got.screened = await client.operation({
  name: 'screen',
  resourceType: 'ResearchStudy',
  id: 'NCT06801119',
  input: JSON.parse(readFileSync(parametersFile, 'utf8')),
});
got.screenedAll = await client.operation({
  name: 'screen',
  resourceType: 'ResearchStudy',
  input: JSON.parse(readFileSync(parametersFile, 'utf8')),
});
got.screenings = await client.search({
  resourceType: 'GuidanceResponse',
  searchParams: { patient: got.screened.subject.reference.split('/')[1], _count: 1 },
});
got.screeningPage2 = await client.nextPage({ bundle: got.screenings });
const study = got.metadata.rest[0].resource.find((r) => r.type === 'ResearchStudy');
got.operationDefinition = await client.resolve({ reference: study.operation[0].definition });
got.smart = await client.smartAuthMetadata();
process.stdout.write(JSON.stringify(got));
