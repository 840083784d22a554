# frozen_string_literal: true

require "spec_helper"

# config.mysql_url and friends: validated at the edge, password never shown.
RSpec.describe "MySQL settings" do
  def settings_for(url)
    c = MegaMutex::Configuration.new
    c.mysql_url = url
    c.mysql_settings
  end

  it "reads user, password, host, port and database from a mysql:// URL" do
    s = settings_for("mysql://locks:s3cret@db1.example:3307/app")
    expect(s.to_h).to eq(host: "db1.example", port: 3307, socket: nil, username: "locks", password: "s3cret", database: "app")
  end

  it "takes ?socket=, percent-encoded credentials, other schemes, IPv6 and no database" do
    expect(settings_for("mysql://root@localhost/?socket=/run/mysqld/mysqld.sock").to_h)
      .to include(socket: "/run/mysqld/mysqld.sock", database: nil, password: nil, username: "root")
    expect(settings_for("mysql2://u%40x:p%2Fw%3A@h").to_h).to include(username: "u@x", password: "p/w:", port: nil) # nil: 3306
    expect(settings_for("trilogy://h").host).to eq("h")
    expect(settings_for("mariadb://[::1]:3306").host).to eq("::1")
  end

  it "never shows the password: not in mysql_url, inspect, to_s or an error" do
    c = MegaMutex::Configuration.new
    c.mysql_url = "mysql://locks:s3cret@db1:3306"
    expect(c.mysql_url).to eq("mysql://locks:[FILTERED]@db1:3306")
    expect(c.inspect).not_to include("s3cret")
    expect(c.mysql_settings.to_s).not_to include("s3cret")
    ["mysqlx://u:s3cret@h", "mysql://u:s3cret@h:99999", "mysql://u:s3cret@h/?pool=5", "mysql://u:s3cret@h/?socket=relative"].each do |bad|
      expect { c.mysql_url = bad }.to raise_error(ArgumentError) { |e| expect(e.message).not_to include("s3cret") }
    end
  end

  it "names what is wrong with a bad URL" do
    c = MegaMutex::Configuration.new
    expect { c.mysql_url = "memcached://h" }.to raise_error(ArgumentError, /mysql_url must start with mysql:\/\//)
    expect { c.mysql_url = "mysql://h:0" }.to raise_error(ArgumentError, /port must be 1 to 65535/)
    expect { c.mysql_url = "mysql://h/?ssl=1" }.to raise_error(ArgumentError, /unknown parameter\(s\) ssl/)
    expect { c.mysql_url = "mysql://h/?socket=tmp/s" }.to raise_error(ArgumentError, /socket must be an absolute path/)
    expect { c.mysql_url = "not a url" }.to raise_error(ArgumentError, /mysql_url/)
    expect { c.mysql_url = 42 }.to raise_error(ArgumentError, /mysql_url must be a String/)
  end

  it "takes database.yml-style Hashes (String or Symbol keys) through mysql_settings=" do
    c = MegaMutex::Configuration.new
    c.mysql_settings = { "host" => "db", "port" => "3307", "username" => "u", "password" => "p", adapter: "mysql2", pool: 5 }
    expect(c.mysql_settings.to_h).to include(host: "db", port: 3307, username: "u", password: "p")
    expect { c.mysql_settings = "db" }.to raise_error(ArgumentError, /must be a Hash/)
    expect { c.mysql_settings = { port: -1 } }.to raise_error(ArgumentError, /port/)
  end

  it "needs a server for backend :mysql: mysql_url, or MEGA_MUTEX_MYSQL_URL" do
    expect { MegaMutex.configure { |c| c.backend = :mysql } }.to raise_error(ArgumentError, /MEGA_MUTEX_MYSQL_URL/)
    ENV["MEGA_MUTEX_MYSQL_URL"] = "mysql://env-user:pw@envhost:3310"
    config = MegaMutex.configure { |c| c.backend = :mysql }
    expect(config.mysql_settings.to_h).to include(host: "envhost", port: 3310, username: "env-user")
    expect(config.mysql_url).to eq("mysql://env-user:[FILTERED]@envhost:3310")
  ensure
    ENV.delete("MEGA_MUTEX_MYSQL_URL")
  end
end
