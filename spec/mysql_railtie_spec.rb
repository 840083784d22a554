# frozen_string_literal: true

require "spec_helper"
require "rails/railtie"
require "mega_mutex/railtie"

# In Rails, backend :mysql without a URL uses the application's own database
# settings (config/database.yml's primary database, when it is MySQL).
RSpec.describe "MegaMutex::Railtie and backend :mysql" do
  let(:railtie) { MegaMutex::Railtie }

  it "finds the primary MySQL database of the environment (single and multi-database files)" do
    single = { "production" => { "adapter" => "mysql2", "host" => "db", "username" => "app", "password" => "pw" } }
    multi = { "production" => { "primary" => { "adapter" => "trilogy", "host" => "p" }, "cache" => { "adapter" => "sqlite3" } } }
    expect(railtie.mysql_database_settings(single, "production")).to include("host" => "db", "username" => "app")
    expect(railtie.mysql_database_settings(multi, "production")).to include("host" => "p")
    expect(railtie.mysql_database_settings({ "production" => { "adapter" => "postgresql" } }, "production")).to be_nil
    expect(railtie.mysql_database_settings(nil, "production")).to be_nil
  end

  it "configures backend :mysql from the database settings when no URL is given, and a URL wins over them" do
    skip "mariadbd is not installed" unless Servers::MariaDB.available?
    db = Servers::MariaDB.shared
    settings = { "adapter" => "mysql2", "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
    allow(railtie).to receive(:mysql_database_settings).and_return(settings)
    config = railtie.apply({ backend: :mysql, namespace: @namespace }, logger: nil)
    expect(config.mysql_settings.to_h).to include(host: "127.0.0.1", port: db.port, username: "root")
    expect(MegaMutex.with_distributed_mutex("from-rails") { MegaMutex.get_current_lock("from-rails") }).to match(/:#{Process.pid}:/)

    config = railtie.apply({ backend: :mysql, mysql_url: "mysql://other@elsewhere:3307" }, logger: nil)
    expect(config.mysql_settings.to_h).to include(host: "elsewhere", port: 3307)
  end

  it "says what is missing when the application's database is not MySQL and no URL is given" do
    allow(railtie).to receive(:mysql_database_settings).and_return(nil)
    expect { railtie.apply({ backend: :mysql }, logger: nil) }.to raise_error(ArgumentError, /config.mega_mutex: .*mysql_url/)
  end
end
